"""A real Japanese + English blend, with megatron-core's own BlendedMegatronDatasetBuilder as the oracle.

Real parts only: Debian's ``debian-reference-ja`` and ``debian-reference-en`` text, the real Llama-3.1 tokenizer
(rebuilt offline, tests/fixtures/real_data.py), tokenized by the plan's own tokenize commands. The plan's JobSpec
is resolved as the train job resolves it (``launcher.mix.resolve_train_spec``: by-token weights from the tokenize
stage's stats.json), then megatron-core builds the training blend from the JobSpec's ``train_data``: the share
of samples drawn from each dataset over the first N matches the weights. The recipe's data module is built for
real (CPU) from the same spec: its paths equal the JobSpec's, and its datasets draw the same shares.
"""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from launcher.jobspec import TrainSpec
from launcher.mix import resolve_train_spec
from launcher.plan import LaunchPlan, Overrides, PlanContext, build_plan
from launcher.profiles import load_profile

pytest.importorskip("megatron.core.datasets.blended_megatron_dataset_builder", reason="needs megatron-core")

REPO = Path(__file__).resolve().parent.parent
N = 4000  # samples looked at
SEQ = 256


def _plan(tmp: Path, tokenizer: Path, data: tuple[str, ...], valid: tuple[str, ...]) -> LaunchPlan:
    """The workstation profile with its storage in ``tmp`` (no container: the job sees host paths)."""
    prof = load_profile("workstation-48gb")
    st = prof.storage
    storage = dataclasses.replace(st, data=dataclasses.replace(st.data, host=str(tmp / "data")),
                                  runs=dataclasses.replace(st.runs, host=str(tmp / "runs")),
                                  models=dataclasses.replace(st.models, host=str(tmp / "models")))
    prof = dataclasses.replace(prof, storage=storage)
    ov = Overrides(data=data, valid_data=valid, model_dir=str(tokenizer), seq_length=SEQ, gbs=8, max_steps=50,
                   num_layers=2, random_init=True)
    return build_plan(prof, ov, PlanContext(code_dir=str(REPO), command="test", run_name="mix"))


def _run_tokenize_stage(plan: LaunchPlan) -> None:
    """The plan's tokenize commands, as the job runs them (python -m launcher.cli tokenize ...)."""
    script = plan.stage("tokenize").script
    cmds = [ln.removeprefix("exec ") for ln in script.splitlines() if "launcher.cli tokenize" in ln]
    assert cmds, script
    for cmd in cmds:
        cmd = cmd.replace("python3 ", f"{sys.executable} ", 1)
        subprocess.run(["bash", "-c", cmd], check=True, cwd=REPO, capture_output=True, timeout=600)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory, japanese_jsonl: Path, english_jsonl: Path) -> Path:
    root = tmp_path_factory.mktemp("mix")
    lines_ja = japanese_jsonl.read_text(encoding="utf-8").splitlines(keepends=True)
    lines_en = english_jsonl.read_text(encoding="utf-8").splitlines(keepends=True)
    for lang, lines in (("ja", lines_ja), ("en", lines_en)):
        d = root / "data" / lang
        d.mkdir(parents=True)
        cut = len(lines) * 9 // 10
        (d / "train_0.jsonl").write_text("".join(lines[:cut // 2]), encoding="utf-8")
        (d / "train_1.jsonl").write_text("".join(lines[cut // 2:cut]), encoding="utf-8")
        (d / "valid.jsonl").write_text("".join(lines[cut:]), encoding="utf-8")
    return root


def megatron_blend(train_data: list[Any], n: int, seq: int) -> Any:
    """megatron-core's BlendedMegatronDatasetBuilder on a Megatron data_prefix list (the oracle)."""
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig
    from megatron.core.datasets.utils import get_blend_from_list

    config = GPTDatasetConfig(random_seed=1234, sequence_length=seq, blend_per_split=[
        get_blend_from_list(train_data), None, None],
        tokenizer=SimpleNamespace(eod=128001, pad=128001, unique_identifiers={"class": "llama31-base"}),
        reset_position_ids=False, reset_attention_mask=False, eod_mask_loss=False, create_attention_mask=False)
    train, _, _ = BlendedMegatronDatasetBuilder(GPTDataset, [n, None, None], lambda: True, config).build()
    return train


def shares_of(blended: Any, n: int) -> np.ndarray:
    """Fraction of the first n samples drawn from each dataset of a BlendedDataset."""
    return np.bincount(np.asarray(blended.dataset_index[:n]), minlength=len(blended.datasets)) / n


def _assert_shares(got: np.ndarray, weights: list[float], n: int) -> None:
    for g, w in zip(got, weights):
        tol = 3 * math.sqrt(w * (1 - w) / n) + 1 / n  # three binomial standard errors
        assert abs(g - w) <= tol, (got, weights)


def test_explicit_weights_are_the_shares_megatron_draws(corpus: Path, llama31_tokenizer_dir: Path) -> None:
    plan = _plan(corpus, llama31_tokenizer_dir, ("0.9:ja/train_*.jsonl", "0.1:en/train_*.jsonl"),
                 ("ja=ja/valid.jsonl", "en=en/valid.jsonl"))
    t = plan.jobspec.train
    assert [b.share for b in t.blend] == [0.9, 0.1]  # known at plan time: explicit shares
    _run_tokenize_stage(plan)
    spec = resolve_train_spec(t)
    assert spec.train_data == t.train_data  # nothing left to resolve in the job
    blended = megatron_blend(spec.train_data, N, SEQ)
    assert [ds.dataset_path for ds in blended.datasets] == [b.prefix for b in t.blend]
    _assert_shares(shares_of(blended, N), [0.9, 0.1], N)


def test_default_weights_follow_the_tokens_written_by_the_tokenize_stage(corpus: Path,
                                                                         llama31_tokenizer_dir: Path) -> None:
    plan = _plan(corpus, llama31_tokenizer_dir, ("ja/train_*.jsonl", "en/train_*.jsonl"), ("ja/valid.jsonl",))
    t = plan.jobspec.train
    assert t.train_data == [] and [b.weight for b in t.blend] == [None, None]  # resolved in the job
    assert [b.stats for b in t.blend] == [b.prefix + ".stats.json" for b in t.blend]
    _run_tokenize_stage(plan)
    tokens = [json.loads(Path(b.stats).read_text())["tokens"] for b in t.blend]  # type: ignore[arg-type]
    spec = resolve_train_spec(t)
    want = [n / sum(tokens) for n in tokens]
    assert [b.tokens for b in spec.blend] == tokens
    assert spec.train_data[0::2] == pytest.approx(want) and spec.train_data[1::2] == [b.prefix for b in t.blend]
    assert 0.3 < want[0] < 0.7  # not a degenerate mix: both languages are drawn from
    blended = megatron_blend(spec.train_data, N, SEQ)
    _assert_shares(shares_of(blended, N), want, N)
    # epochs: share x run tokens / tokens
    run_tokens = 50 * 8 * SEQ
    assert [b.epochs for b in spec.blend] == pytest.approx([w * run_tokens / n for w, n in zip(want, tokens)],
                                                           abs=5e-4)  # rounded to 3 places


@pytest.mark.nemo
def test_the_recipes_data_module_builds_what_the_jobspec_says(corpus: Path, llama31_tokenizer_dir: Path) -> None:
    """recipes/cpt.py's data module, built for real on CPU: paths equal the JobSpec's, train draws the JobSpec's
    shares, and there is one validation dataloader per named set, in order."""
    pytest.importorskip("nemo.collections.llm", reason="needs nemo_toolkit 2.7.x")
    import fiddle as fdl

    from recipes import cpt

    plan = _plan(corpus, llama31_tokenizer_dir, ("0.7:ja/train_*.jsonl", "0.3:en/train_*.jsonl"),
                 ("ja=ja/valid.jsonl", "en=en/valid.jsonl"))
    _run_tokenize_stage(plan)
    spec: TrainSpec = resolve_train_spec(plan.jobspec.train)
    r = cpt.train_recipe(spec, "sdpa")
    bad = [c for c in cpt.train_recipe_checks(r, spec, "sdpa") if not c.ok]
    assert not bad, bad
    assert r.data.paths["train"] == spec.train_data
    assert r.data.validation_sets == [[v.name, v.data] for v in spec.valid_sets]
    assert [v.name for v in spec.valid_sets] == ["ja", "en"]
    dm = fdl.build(r.data)
    dm.build(trainer_max_steps=spec.max_steps, trainer_val_check_interval=spec.val_check_interval,
             trainer_limit_val_batches=spec.limit_val_batches, trainer_limit_test_batches=spec.limit_val_batches)
    n = spec.max_steps * spec.parallelism.gbs
    oracle = megatron_blend(spec.train_data, n, SEQ)
    assert np.array_equal(np.asarray(dm._train_ds.dataset_index), np.asarray(oracle.dataset_index))
    _assert_shares(shares_of(dm._train_ds, n), [0.7, 0.3], n)
    dm.trainer = SimpleNamespace(global_step=0)  # what _create_dataloader reads
    loaders = dm.val_dataloader()
    assert isinstance(loaders, list) and len(loaders) == 2
    got = [ld.dataset.dataset_path for ld in loaders]
    assert got == [v.data[0] for v in spec.valid_sets]
    assert all(ld.mode == "validation" for ld in loaders)


@pytest.mark.nemo
def test_the_train_entry_resolves_the_weights_from_stats_json(corpus: Path, llama31_tokenizer_dir: Path,
                                                              tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                                              ) -> None:
    """recipes.entry train: the JobSpec as the plan wrote it (weights by tokens, not resolved), after the tokenize
    stage: the recipe it builds trains on the stats.json shares; without a stats.json or .idx the job stops with
    an error naming the blend, before NeMo builds anything."""
    pytest.importorskip("nemo.collections.llm", reason="needs nemo_toolkit 2.7.x")
    from recipes.entry import main as entry_main

    plan = _plan(corpus, llama31_tokenizer_dir, ("ja/train_*.jsonl", "en/train_*.jsonl"),
                 ("ja=ja/valid.jsonl", "en=en/valid.jsonl"))
    _run_tokenize_stage(plan)
    js = tmp_path / "jobspec.json"
    js.write_text(plan.jobspec.to_json())
    assert json.loads(js.read_text())["train"]["train_data"] == []
    assert entry_main(["train", "--jobspec", str(js), "--validate-only"]) == 0
    table = capsys.readouterr().out
    want = resolve_train_spec(plan.jobspec.train).train_data
    assert "ok  data paths" in table and repr(want[1]) in table and repr(want[0]) in table
    missing = dataclasses.replace(plan.jobspec.train.blend[0], prefix=str(tmp_path / "gone_text_document"))
    bad = dataclasses.replace(plan.jobspec, train=dataclasses.replace(
        plan.jobspec.train, blend=[missing, *plan.jobspec.train.blend[1:]]))
    js.write_text(bad.to_json())
    assert entry_main(["train", "--jobspec", str(js), "--validate-only"]) == 4
    assert "jobspec train.blend" in capsys.readouterr().err
