"""One validation loss per named set, replayed on CPU with a real ``lightning.Trainer``.

The module below validates the way NeMo's ``MegatronStrategy`` does: its ``validation_step`` takes the
``dataloader_iter`` (Lightning then uses the ``_DataLoaderIterDataFetcher`` NeMo forces), pulls the micro-batches
of one step from it, logs ``val_loss`` with ``on_epoch=True`` -- with no ``dataloader_idx`` argument, as NeMo's
does -- and returns the loss. With the list of dataloaders ``recipes.data.NamedValidationDataModule`` returns,
``recipes.callbacks.StepStats`` files each step's returned loss under its set, logs ``val_loss_<name>`` and
``val_loss`` (the first set's, which a checkpoint callback monitoring ``val_loss`` reads) and writes one step-log
line per set.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.nemo
pytest.importorskip("nemo.utils.exp_manager", reason="needs nemo_toolkit 2.7.x: pip install -e '.[nemo]'")

import lightning as L  # noqa: E402
import torch  # noqa: E402
from lightning.pytorch.callbacks import ModelCheckpoint  # noqa: E402
from nemo.utils.exp_manager import TimingCallback  # noqa: E402

from recipes.callbacks import StepStats  # noqa: E402

MICRO = 2  # micro-batches per validation step (NeMo's num_microbatches)


class NeMoLikeValidation(L.LightningModule):
    """Training on random data; validation as MegatronStrategy.validation_step runs it."""

    def __init__(self, val_values: list[float]) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(1, 1)
        self.val_values = val_values

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        return self.lin(batch).sum()

    def validation_step(self, dataloader_iter: Any) -> torch.Tensor:
        # one step = MICRO micro-batches from the iterator; the loss is their mean (MaskedTokenLossReduction)
        batches = [next(dataloader_iter) for _ in range(MICRO)]
        out = torch.stack([b[0].float().mean() for b in batches]).mean()
        self.log("val_loss", out, prog_bar=True, on_epoch=True)  # exactly NeMo's call (pp_size 1)
        return out

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.0)

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(torch.randn(100, 1), batch_size=1)

    def val_dataloader(self) -> Any:
        # one dataloader per set; every sample of set i holds its value, so its loss is known
        loaders = [torch.utils.data.DataLoader(torch.full((64, 1), v), batch_size=1) for v in self.val_values]
        return loaders[0] if len(loaders) == 1 else loaders


def _fit(tmp_path: Path, values: list[float], names: list[str] | None, monitor: bool = True,
         seen: dict[str, float] | None = None) -> list[dict]:
    log = tmp_path / "logs" / "train_steps.jsonl"
    callbacks: list[Any] = [StepStats(tokens_per_step=8, flops_per_token=1.0, world_size=1, log_path=str(log),
                                      val_sets=names), TimingCallback()]
    ck = ModelCheckpoint(dirpath=str(tmp_path / "ck"), monitor="val_loss", mode="min", save_top_k=1)
    if monitor:
        callbacks.append(ck)
    trainer = L.Trainer(max_steps=6, val_check_interval=3, limit_val_batches=2 * MICRO, num_sanity_val_steps=0,
                        callbacks=callbacks, accelerator="cpu", devices=1, logger=False, log_every_n_steps=1,
                        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=monitor,
                        default_root_dir=str(tmp_path))
    trainer.fit(NeMoLikeValidation(values))
    if seen is not None:
        seen.update({k: float(v) for k, v in trainer.callback_metrics.items()})
    if monitor:
        assert ck.best_model_score is not None and float(ck.best_model_score) == pytest.approx(values[0])
    return [json.loads(line) for line in log.read_text().splitlines()]


def test_one_val_line_per_set_and_validation(tmp_path: Path) -> None:
    lines = _fit(tmp_path, [2.0, 5.0], ["ja", "en"])
    vals = [ln for ln in lines if ln["kind"] == "val"]
    assert [(v["step"], v["set"], v["val_loss"]) for v in vals] == [
        (3, "ja", 2.0), (3, "en", 5.0), (6, "ja", 2.0), (6, "en", 5.0)]
    for v in vals:  # the format the status/report side reads
        assert set(v) >= {"kind", "step", "set", "val_loss", "attempt", "time"} and v["attempt"] == 1
    assert [ln["step"] for ln in lines if ln["kind"] == "train"] == [1, 2, 3, 4, 5, 6]


def test_lightnings_own_per_dataloader_loss_misfiles_a_step_ours_does_not(tmp_path: Path) -> None:
    """Why StepStats files the steps itself: Lightning's dataloader index for a dataloader_iter step is that of the
    last batch fetched before it, so its val_loss/dataloader_idx_0 counts the first step of the second set."""
    seen: dict[str, float] = {}
    lines = _fit(tmp_path, [2.0, 5.0], ["ja", "en"], seen=seen)
    assert seen["val_loss/dataloader_idx_0"] == pytest.approx(3.0)  # (2 + 2 + 5) / 3: Lightning's, wrong
    assert (seen["val_loss_ja"], seen["val_loss_en"], seen["val_loss"]) == (2.0, 5.0, 2.0)  # ours
    assert {v["set"]: v["val_loss"] for v in lines if v["kind"] == "val"} == {"ja": 2.0, "en": 5.0}


def test_without_the_names_the_losses_are_not_found(tmp_path: Path) -> None:
    """The test can fail: StepStats told of one set while two run finds no plain val_loss (Lightning files
    them per dataloader), so a checkpoint callback monitoring val_loss would stop the run."""
    lines = _fit(tmp_path, [2.0, 5.0], None, monitor=False)
    assert [(v["set"], v["val_loss"]) for v in lines if v["kind"] == "val"] == [("valid", None), ("valid", None)]


def test_a_single_unnamed_set_keeps_the_old_line(tmp_path: Path) -> None:
    lines = _fit(tmp_path, [3.0], None)
    assert [(v["step"], v["set"], v["val_loss"]) for v in lines if v["kind"] == "val"] == [
        (3, "valid", 3.0), (6, "valid", 3.0)]


def test_callbacks_that_cannot_take_a_dataloader_index_are_found() -> None:
    """With several validation dataloaders Lightning passes dataloader_idx to every callback's batch hooks:
    recipes.cpt checks the recipe's callbacks for it before the job starts (GarbageCollectionCallback lacks it)."""
    pytest.importorskip("nemo.collections.llm")
    from nemo.lightning.pytorch.callbacks import GarbageCollectionCallback

    from recipes.cpt import hooks_without_dataloader_idx

    assert hooks_without_dataloader_idx(GarbageCollectionCallback) == [
        "GarbageCollectionCallback.on_validation_batch_end"]
    assert hooks_without_dataloader_idx(TimingCallback) == []
    assert hooks_without_dataloader_idx(StepStats) == []
