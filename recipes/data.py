"""Several named validation sets, one validation loss each: NeMo's PreTrainingDataModule with a list of
validation dataloaders.

NeMo 2.7.3's ``PreTrainingDataModule`` takes one validation blend. This subclass builds the first set as NeMo does
(``paths["validation"]``: the one the trainer's ``limit_val_batches`` is reconfigured against) and every further
set with megatron-core's ``BlendedMegatronDatasetBuilder`` on the same ``GPTDatasetConfig`` and the same sample
count, then returns one dataloader per set. Lightning runs them one after the other (sequential mode); with one
set ``val_dataloader`` returns the single dataloader, exactly as NeMo does.

How the losses come out (read from NeMo/Lightning, and replayed on CPU in ``tests/test_valid_sets.py``):
``MegatronStrategy.validation_step`` returns each step's loss and logs it as ``val_loss``, which with several
dataloaders Lightning files as ``val_loss/dataloader_idx_<i>`` -- but under the dataloader of the batch fetched
before the step, so the first step of each further set counts as the previous set's. ``recipes.callbacks.StepStats``
therefore files the returned losses itself (by the dataloader of the batches each step consumed), logs
``val_loss_<name>`` per set and ``val_loss`` = the first set's (the checkpoint monitor's metric), and writes one
step-log line per set. The ``val_loss/dataloader_idx_<i>`` curves Lightning still logs are not to be read.
"""

from __future__ import annotations

from typing import Any

from nemo.collections.llm.gpt.data.pre_training import PreTrainingDataModule


def val_samples(max_steps: int, val_check_interval: int, limit_val_batches: int | float, gbs: int) -> int | None:
    """The samples one validation set needs over the run: NeMo's own rule in ``PreTrainingDataModule.build``
    (every validation draws ``limit_val_batches`` global batches; a fraction means one pass: None)."""
    if isinstance(limit_val_batches, float) and 0.0 < limit_val_batches <= 1.0:
        return None
    return int((max_steps // val_check_interval + 1) * limit_val_batches * gbs)


class NamedValidationDataModule(PreTrainingDataModule):
    """``PreTrainingDataModule`` with ``validation_sets``: ``[[name, [prefix, ...]], ...]`` in order, the first
    equal to ``paths["validation"]``."""

    def __init__(self, paths: dict[str, list[Any]], validation_sets: list[list[Any]], **kwargs: Any) -> None:
        if not validation_sets or list(validation_sets[0][1]) != list(paths["validation"]):
            raise ValueError(f"validation_sets[0] must be paths['validation'] ({paths.get('validation')!r}); got "
                             f"{validation_sets[:1]!r}")
        super().__init__(paths=paths, **kwargs)
        self.validation_sets = [(str(name), list(prefixes)) for name, prefixes in validation_sets]
        self._more_validation_ds: list[Any] = []

    @property
    def validation_names(self) -> list[str]:
        return [name for name, _ in self.validation_sets]

    def build(self, trainer_max_steps: int, trainer_val_check_interval: int,
              trainer_limit_val_batches: int | float, trainer_limit_test_batches: int | float) -> None:
        super().build(trainer_max_steps, trainer_val_check_interval, trainer_limit_val_batches,
                      trainer_limit_test_batches)
        n = val_samples(trainer_max_steps, trainer_val_check_interval, trainer_limit_val_batches,
                        self.data_sampler.global_batch_size)
        self._more_validation_ds = [self._build_validation(prefixes, n) for _, prefixes in self.validation_sets[1:]]

    def _build_validation(self, prefixes: list[Any], num_samples: int | None) -> Any:
        """One more validation set, built as NeMo builds its validation split (same config, seed, sizes)."""
        from dataclasses import replace

        from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
        from megatron.core.datasets.utils import get_blend_from_list

        config = replace(self.gpt_dataset_config, blend=None, split=None,
                         blend_per_split=[None, get_blend_from_list(prefixes), None])
        _, ds, _ = BlendedMegatronDatasetBuilder(self.dataset_cls, [None, num_samples, None],
                                                 is_built_on_rank=lambda: True, config=config).build()
        return ds

    def val_dataloader(self) -> Any:
        first = super().val_dataloader()
        if len(self.validation_sets) == 1:
            return first
        return [first] + [self._create_dataloader(ds, mode="validation") for ds in self._more_validation_ds]
