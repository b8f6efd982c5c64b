"""HF -> NeMo -> HF for real, on CPU, through the job's own entry point.

``python -m recipes.entry convert`` and ``... export`` run in subprocesses (``CUDA_VISIBLE_DEVICES=""``) on a
two-layer Llama-3.1-shaped model built here (hidden 64, the real 128256-token vocabulary and llama3 RoPE scaling,
random weights with every RMSNorm weight set away from 1.0: a converter that drops the norms leaves them at 1.0)
and the real Llama-3.1 tokenizer (``tests.fixtures.real_data``). The exported HF weights must be the source's,
bit for bit. Each real stage takes about half a minute here, most of it NeMo's import.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.nemo
pytest.importorskip("nemo.collections.llm", reason="needs nemo_toolkit 2.7.x: pip install -e '.[nemo]'")

import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM  # noqa: E402

from launcher.jobspec import ConvertSpec, ExportSpec, JobSpec, TrainSpec  # noqa: E402
from recipes.entry import main as entry_main  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
LAST = "t--step=0-consumed_samples=0.0-last"  # a NeMo-style -last entry: what export resolves (decide_resume)
SAME_CONFIG = ("num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads",
               "vocab_size", "rope_theta", "rope_scaling", "max_position_embeddings", "tie_word_embeddings")
TEXTS = ["Hello world!", "日本語の文章を学習します。", "def f(x):\n    return x ** 2\n"]


def _entry(stage: str, jobspec: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "",
           "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)}
    return subprocess.run([sys.executable, "-m", "recipes.entry", stage, "--jobspec", str(jobspec)],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def _jobspec(path: Path, *, hf_model_dir: Path, convert_out: Path, checkpoint_dir: Path, export_out: Path) -> Path:
    spec = JobSpec(
        train=TrainSpec(),
        convert=ConvertSpec(model="llama3.1-8b", num_layers=2, hf_model_dir=str(hf_model_dir),
                            output_path=str(convert_out)),
        export=ExportSpec(model="llama3.1-8b", num_layers=2, checkpoint_dir=str(checkpoint_dir),
                          output_path=str(export_out)),
    )
    path.write_text(spec.to_json())
    return path


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    """relative path -> (size, mtime_ns) of every file below root."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


def _tail(proc: subprocess.CompletedProcess[str]) -> str:
    return (f"rc={proc.returncode}\n--- stderr (tail) ---\n{proc.stderr[-6000:]}\n"
            f"--- stdout (tail) ---\n{proc.stdout[-2000:]}")


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hf_roundtrip")


@pytest.fixture(scope="module")
def hf_model(work: Path, llama31_tokenizer_dir: Path) -> Path:
    """A two-layer Llama-3.1-shaped HF model in bf16 with the real Llama-3.1 tokenizer."""
    cfg = LlamaConfig(vocab_size=128256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2,
                      rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                    "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
                      max_position_embeddings=131072, rope_theta=500000.0, tie_word_embeddings=False,
                      torch_dtype="bfloat16")
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):  # input_layernorm, post_attention_layernorm, model.norm
                p.copy_(0.5 + torch.rand(p.shape, generator=g))
    out = work / "hf"
    model.to(torch.bfloat16).save_pretrained(out, safe_serialization=True)
    for f in llama31_tokenizer_dir.iterdir():
        if f.is_file() and not f.name.startswith("."):
            shutil.copy(f, out / f.name)
    return out


@pytest.fixture(scope="module")
def jobspec(work: Path, hf_model: Path) -> Path:
    return _jobspec(work / "jobspec.json", hf_model_dir=hf_model, convert_out=work / "nemo",
                    checkpoint_dir=work / "checkpoints", export_out=work / "hf_out")


@pytest.fixture(scope="module")
def converted(work: Path, jobspec: Path) -> tuple[subprocess.CompletedProcess[str], Path]:
    return _entry("convert", jobspec, work), work / "nemo"


@pytest.fixture(scope="module")
def exported(work: Path, jobspec: Path,
             converted: tuple[subprocess.CompletedProcess[str], Path]) -> tuple[subprocess.CompletedProcess[str], Path]:
    proc, nemo_ckpt = converted
    if proc.returncode != 0:
        pytest.fail("convert failed, nothing to export:\n" + _tail(proc))
    ckdir = work / "checkpoints"
    ckdir.mkdir()
    (ckdir / LAST).symlink_to(nemo_ckpt, target_is_directory=True)  # the run's -last entry -> the checkpoint
    return _entry("export", jobspec, work), work / "hf_out"


def test_convert_writes_a_nemo_checkpoint(converted: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    proc, out = converted
    assert proc.returncode == 0, _tail(proc)
    assert (out / "context").is_dir() and (out / "weights").is_dir()
    assert any((out / "weights").iterdir())
    assert not out.with_name(out.name + ".partial").exists()  # written beside and renamed when complete


def test_export_gives_back_the_source_weights_bit_for_bit(
        hf_model: Path, exported: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    proc, out = exported
    assert proc.returncode == 0, _tail(proc)
    assert not out.with_name(out.name + ".partial").exists()
    src, got = load_file(hf_model / "model.safetensors"), load_file(out / "model.safetensors")
    norms = [k for k in src if k.endswith("norm.weight")]
    assert len(norms) == 2 * 2 + 1  # two per layer and the final one
    assert all(not torch.all(src[k] == 1) for k in norms)  # the fixture: a lost norm would show as 1.0
    assert sorted(got) == sorted(src)
    differ = [k for k in src if got[k].dtype != src[k].dtype or got[k].shape != src[k].shape
              or not torch.equal(got[k], src[k])]
    assert not differ, differ


def test_export_writes_the_source_config_and_tokenizer(
        hf_model: Path, exported: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    proc, out = exported
    assert proc.returncode == 0, _tail(proc)
    src, got = json.loads((hf_model / "config.json").read_text()), json.loads((out / "config.json").read_text())
    assert {k: got.get(k) for k in SAME_CONFIG} == {k: src.get(k) for k in SAME_CONFIG}
    assert got["architectures"] == ["LlamaForCausalLM"]
    # Llama-3.1 base: <|begin_of_text|> and <|end_of_text|>, from the tokenizer
    assert (got["bos_token_id"], got["eos_token_id"]) == (128000, 128001)
    tok_src, tok_got = AutoTokenizer.from_pretrained(hf_model), AutoTokenizer.from_pretrained(out)
    assert tok_got("Hello world!").input_ids == [128000, 9906, 1917, 0]
    assert [tok_got(t).input_ids for t in TEXTS] == [tok_src(t).input_ids for t in TEXTS]


def test_second_convert_keeps_the_checkpoint(work: Path, jobspec: Path,
                                             converted: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    first, out = converted
    assert first.returncode == 0, _tail(first)
    before = _tree(out)
    proc = _entry("convert", jobspec, work)
    assert proc.returncode == 0, _tail(proc)
    assert "holds a converted checkpoint; keeping it" in proc.stderr
    assert "[NeMo" not in proc.stderr  # decided before NeMo is imported
    assert _tree(out) == before
    assert not out.with_name(out.name + ".partial").exists()


def test_convert_refuses_an_output_that_is_not_a_checkpoint(work: Path, hf_model: Path) -> None:
    out = work / "not-a-checkpoint"
    out.mkdir()
    js = _jobspec(work / "jobspec-empty-out.json", hf_model_dir=hf_model, convert_out=out,
                  checkpoint_dir=work / "unused", export_out=work / "unused-out")
    proc = _entry("convert", js, work)
    assert proc.returncode == 2, _tail(proc)
    assert "exists but is not a NeMo checkpoint" in proc.stderr and str(out) in proc.stderr
    assert out.is_dir() and not any(out.iterdir())
    assert not out.with_name(out.name + ".partial").exists()


def test_a_second_export_of_the_same_checkpoint_keeps_it(
        work: Path, jobspec: Path, exported: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    # a --resume of a finished run reruns export: the output is the newest checkpoint's export already
    proc, out = exported
    assert proc.returncode == 0, _tail(proc)
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    again = _entry("export", jobspec, work)
    assert again.returncode == 0, _tail(again)
    assert "is already the export of" in again.stderr and "[NeMo" not in again.stderr  # decided before NeMo
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_export_refuses_an_existing_output(work: Path, hf_model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """In-process (the same ``main`` as ``python -m recipes.entry``): the refusal comes after NeMo's import, which
    this test process has already paid for. It writes nothing, so the -last entry need not lead anywhere."""
    ckdir = work / "checkpoints-refuse"
    ckdir.mkdir()
    (ckdir / LAST).symlink_to(work / "nemo", target_is_directory=True)
    out = work / "existing-export"
    out.mkdir()
    (out / "keep.txt").write_text("mine\n")
    js = _jobspec(work / "jobspec-existing-export.json", hf_model_dir=hf_model, convert_out=work / "nemo",
                  checkpoint_dir=ckdir, export_out=out)
    assert entry_main(["export", "--jobspec", str(js)]) == 2
    assert "exists and is not the export of" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"] and (out / "keep.txt").read_text() == "mine\n"
    assert not out.with_name(out.name + ".partial").exists()
