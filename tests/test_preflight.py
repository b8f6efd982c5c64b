"""Pre-flight checks driven with real files: Megatron ``.bin/.idx`` pairs written in the documented layout
(../shared/REFERENCE.md section 4) in a temporary directory, real model/tokenizer directories, real mounts."""

from __future__ import annotations

import dataclasses
import os
import struct
import sys
from array import array
from pathlib import Path

import pytest

from launcher.errors import Problem
from launcher.jobspec import Parallelism
from launcher.memory import MemoryConfig, estimate
from launcher.models import MODELS
from launcher.preflight import (
    IdxError,
    PreflightFacts,
    RealFileSystem,
    check_attention_env,
    check_parallelism,
    container_to_host,
    read_idx,
    run_preflight,
)

M8 = MODELS["llama3.1-8b"]
FS = RealFileSystem()
PLANTED_TOKEN = "hf_PLANTEDsecretVALUE0123456789"


def write_indexed(prefix: Path, docs: list[list[int]], dtype_code: int = 4) -> None:
    """A Megatron IndexedDataset pair: .bin = tokens; .idx = magic, u64 1, u8 dtype, u64 N, u64 D, int32[N] lengths,
    int64[N] byte offsets, int64[D] document indices (one sequence per document here)."""
    fmt = {4: "i", 8: "H"}[dtype_code]
    size = {4: 4, 8: 2}[dtype_code]
    tokens = array(fmt, [t for d in docs for t in d])
    prefix.with_name(prefix.name + ".bin").write_bytes(tokens.tobytes())
    n, d = len(docs), len(docs) + 1
    lengths = array("i", [len(x) for x in docs])
    offsets, pos = array("q"), 0
    for x in docs:
        offsets.append(pos)
        pos += len(x) * size
    doc_idx = array("q", range(d))
    idx = b"MMIDIDX\x00\x00" + struct.pack("<QBQQ", 1, dtype_code, n, d) + lengths.tobytes() + offsets.tobytes() \
        + doc_idx.tobytes()
    prefix.with_name(prefix.name + ".idx").write_bytes(idx)


def hf_model_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text('{"model_type": "llama"}')
    (path / "tokenizer.json").write_text("{}")
    (path / "tokenizer_config.json").write_text("{}")
    return path


def nemo_ckpt(path: Path) -> Path:
    (path / "context").mkdir(parents=True, exist_ok=True)
    (path / "weights").mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def site(tmp_path: Path) -> dict[str, Path]:
    """A host layout like a profile's storage: data, models, runs, mounted at /data, /models, /results."""
    data, models, runs = tmp_path / "data", tmp_path / "models", tmp_path / "runs"
    for p in (data, models, runs):
        p.mkdir()
    write_indexed(data / "ja_text_document", [[128000, 5, 6, 7, 128001]] * 100 + [[128000, 9, 128001]] * 50)
    hf_model_dir(models / "Llama-3.1-8B")
    nemo_ckpt(models / "Llama-3.1-8B-nemo")
    return {"data": data, "models": models, "runs": runs, "root": tmp_path}


def facts(site: dict[str, Path], **kw: object) -> PreflightFacts:
    base = PreflightFacts(
        model=M8,
        parallelism=Parallelism(tp=1, pp=1, cp=2, dp=16, mbs=1, gbs=1024),
        gpus=32,
        seq_length=8192,
        max_steps=150,
        attention="te",
        env={"HF_HUB_OFFLINE": "1"},
        train_data=[(1.0, "/data/ja_text_document")],
        mounts=[(str(site["data"]), "/data"), (str(site["models"]), "/models"), (str(site["runs"]), "/results")],
        uses_container=True,
        container_image="nvcr.io/nvidia/nemo:25.02.01",
        tokenizer_dir="/models/Llama-3.1-8B",
        hf_model_dir="/models/Llama-3.1-8B",
        base_checkpoint="/models/Llama-3.1-8B-nemo",
        download_planned=True,
        convert_planned=False,
        checkpoint_dir="/results/run1/checkpoints",
        resume="auto",
    )
    return dataclasses.replace(base, **kw)  # type: ignore[arg-type]


def by_where(problems: list[Problem]) -> dict[str, Problem]:
    return {p.where: p for p in problems}


# ---------------------------------------------------------------------------------------------------- .idx


def test_read_idx_counts_sequences_and_tokens(tmp_path: Path) -> None:
    write_indexed(tmp_path / "x", [[1, 2, 3], [4, 5], [6]])
    info = read_idx(FS, str(tmp_path / "x.idx"))
    assert (info.version, info.dtype_code, info.itemsize) == (1, 4, 4)
    assert (info.num_sequences, info.num_documents, info.num_tokens) == (3, 3, 6)
    assert (tmp_path / "x.idx").stat().st_size == 34 + 12 * 3 + 8 * 4  # the documented size


def test_read_idx_uint16(tmp_path: Path) -> None:
    write_indexed(tmp_path / "y", [[1, 2, 3, 4]], dtype_code=8)
    info = read_idx(FS, str(tmp_path / "y.idx"))
    assert info.itemsize == 2 and info.num_tokens == 4


def test_read_idx_rejects_bad_files(tmp_path: Path) -> None:
    (tmp_path / "bad.idx").write_bytes(b"NOTANIDX" + b"\x00" * 40)
    with pytest.raises(IdxError, match="magic"):
        read_idx(FS, str(tmp_path / "bad.idx"))
    write_indexed(tmp_path / "t", [[1, 2, 3]] * 10)
    raw = (tmp_path / "t.idx").read_bytes()
    (tmp_path / "t.idx").write_bytes(raw[:-8])
    with pytest.raises(IdxError, match="truncated"):
        read_idx(FS, str(tmp_path / "t.idx"))


# ---------------------------------------------------------------------------------------------------- mounts


def test_container_to_host() -> None:
    mounts = [("/lustre/cpt/data", "/data"), ("/lustre/ja", "/data/ja"), ("/lustre/cpt/models", "/models")]
    assert container_to_host("/data/x_text_document", mounts) == "/lustre/cpt/data/x_text_document"
    assert container_to_host("/data/ja/y", mounts) == "/lustre/ja/y"  # longest prefix wins
    assert container_to_host("/data", mounts) == "/lustre/cpt/data"
    assert container_to_host("/database/z", mounts) is None  # a prefix of the name is not a parent directory
    assert container_to_host("/scratch/z", mounts) is None


# ---------------------------------------------------------------------------------------------------- the whole check


def test_a_good_site_has_no_errors(site: dict[str, Path]) -> None:
    problems = run_preflight(facts(site), FS)
    assert [p for p in problems if p.severity == "error"] == []


def test_data_checked_through_the_mounts(site: dict[str, Path]) -> None:
    f = facts(site, train_data=[(1.0, "/data/missing_text_document"), (1.0, "/scratch/ja_text_document")],
              valid_data=["/data/ja_text_document.bin"])
    w = by_where(run_preflight(f, FS))
    miss = w["--data /data/missing_text_document"]
    assert miss.severity == "error"
    assert str(site["data"] / "missing_text_document.bin") in miss.message  # the host path, as seen via the mount
    assert "not visible inside the container" in w["--data /scratch/ja_text_document"].message
    # a prefix given with its extension is not a prefix
    assert "missing" in w["valid_data /data/ja_text_document.bin"].message


def test_inconsistent_bin_is_an_error(site: dict[str, Path]) -> None:
    b = site["data"] / "ja_text_document.bin"
    b.write_bytes(b.read_bytes()[:-4])
    (p,) = [p for p in run_preflight(facts(site), FS) if p.where.startswith("--data")]
    assert p.severity == "error" and "inconsistent" in p.message


def test_enough_tokens_or_a_warning_with_epochs(site: dict[str, Path]) -> None:
    # the fixture holds 100*5 + 50*3 = 650 tokens
    small = facts(site, max_steps=1, parallelism=Parallelism(tp=1, pp=1, cp=1, dp=1, mbs=1, gbs=4), gpus=1,
                  seq_length=128)
    assert not [p for p in run_preflight(small, FS) if p.where.startswith("--data")]
    big = facts(site)
    (p,) = [p for p in run_preflight(big, FS) if p.where.startswith("--data")]
    assert p.severity == "warning" and "650 tokens" in p.message
    needed = 150 * 1024 * 8192
    assert f"{needed / 650:.1f} times" in p.message


def test_blend_weights_share_the_tokens(site: dict[str, Path]) -> None:
    write_indexed(site["data"] / "en_text_document", [[1] * 1000] * 10)  # 10,000 tokens
    f = facts(site, max_steps=1, parallelism=Parallelism(tp=1, pp=1, cp=1, dp=1, mbs=1, gbs=8), gpus=1,
              seq_length=1000, train_data=[(0.5, "/data/ja_text_document"), (0.5, "/data/en_text_document")])
    w = by_where(run_preflight(f, FS))
    assert "/data/en_text_document" not in " ".join(w)  # 4,000 of 10,000: enough
    assert w["--data /data/ja_text_document"].severity == "warning"  # 4,000 of 650: repeats


def test_tokenize_stage_outputs_are_not_looked_for(site: dict[str, Path]) -> None:
    planned = str(site["data"] / "tokenized" / "new_text_document")
    f = facts(site, train_data=[(1.0, "/data/tokenized/new_text_document")], planned_prefixes_host=frozenset({planned}))
    assert not [p for p in run_preflight(f, FS) if p.where.startswith("--data")]


def test_parallelism_problems_all_at_once() -> None:
    bad = Parallelism(tp=3, pp=5, cp=1, dp=2, mbs=3, gbs=1000)
    w = by_where(check_parallelism(M8, bad, 32, 200000))
    assert {"parallelism", "--gbs", "--tp", "--pp", "--seq-length"} <= set(w)
    assert "30" in w["parallelism"].message and "32 GPUs" in w["parallelism"].message
    assert "allowed: 1, 2, 4, 8, 16, 32" in w["--tp"].message
    gqa = by_where(check_parallelism(M8, Parallelism(tp=16, dp=2, gbs=32), 32, 8192))
    assert "query groups" in gqa["--tp"].message  # 32 heads divide by 16, but 8 KV heads do not


@pytest.mark.parametrize("attention,env,bad", [
    ("te", {}, []),
    ("te", {"NVTE_FLASH_ATTN": "1"}, []),
    ("te", {"NVTE_FUSED_ATTN": "0"}, ["NVTE_FUSED_ATTN"]),  # the seed's clash: megatron raises at model build
    ("te", {"NVTE_FLASH_ATTN": "0", "NVTE_UNFUSED_ATTN": "0"}, ["NVTE_FLASH_ATTN", "NVTE_UNFUSED_ATTN"]),
    ("sdpa", {"NVTE_FLASH_ATTN": "0"}, []),
    ("sdpa", {"NVTE_FLASH_ATTN": "1"}, ["NVTE_FLASH_ATTN"]),
])
def test_nvte_against_attention_backend(attention: str, env: dict[str, str], bad: list[str]) -> None:
    problems = check_attention_env(attention, env)  # type: ignore[arg-type]
    assert sorted(p.where.removeprefix("env ") for p in problems) == sorted(bad)
    assert all(p.severity == "error" and "fix:" in p.message for p in problems)


def test_download_needed_offline_and_gated(site: dict[str, Path]) -> None:
    empty = site["models"] / "Llama-3.1-8B"
    for f in empty.iterdir():
        f.unlink()
    w = by_where(run_preflight(facts(site, env={"HF_HUB_OFFLINE": "1"}), FS))
    assert "HF_HUB_OFFLINE is on" in w["env HF_HUB_OFFLINE"].message
    assert "gated" in w["env HF_TOKEN"].message
    # with a token (by name) and online: the download can run; the token's value appears nowhere
    problems = run_preflight(facts(site, env={"HF_TOKEN": PLANTED_TOKEN}), FS)
    assert not [p for p in problems if p.where.startswith("env HF")]
    assert all(PLANTED_TOKEN not in str(p) for p in problems)
    # no download stage and no model: name the directory
    w = by_where(run_preflight(facts(site, env={"HF_TOKEN": PLANTED_TOKEN}, download_planned=False), FS))
    assert "no download stage" in w["hf_model_dir /models/Llama-3.1-8B"].message


def test_local_model_without_offline_mode_warns(site: dict[str, Path]) -> None:
    w = by_where(run_preflight(facts(site, env={}), FS))
    assert w["env HF_HUB_OFFLINE"].severity == "warning"
    assert "env HF_TOKEN" not in w  # the model is there: no token needed


def test_tokenizer_and_checkpoint_missing(site: dict[str, Path]) -> None:
    f = facts(site, tokenizer_dir="/models/nowhere", base_checkpoint="/models/nothing-nemo")
    w = by_where(run_preflight(f, FS))
    assert "GPT-2" in w["tokenizer_dir /models/nowhere"].message
    assert "convert stage" in w["base_checkpoint /models/nothing-nemo"].message
    f = dataclasses.replace(f, convert_planned=True)
    assert "base_checkpoint /models/nothing-nemo" not in by_where(run_preflight(f, FS))


def test_container_image_and_mount_host_paths(site: dict[str, Path]) -> None:
    f = facts(site, container_image=None, mounts=[*facts(site).mounts, (str(site["root"] / "nope"), "/nope")])
    w = by_where(run_preflight(f, FS))
    assert w["container.image"].severity == "error"
    assert f"mount {site['root'] / 'nope'}:/nope" in w
    # without a container there is nothing to mount and no image to name
    local = facts(site, uses_container=False, container_image=None, mounts=[],
                  train_data=[(1.0, str(site["data"] / "ja_text_document"))],
                  tokenizer_dir=str(site["models"] / "Llama-3.1-8B"), hf_model_dir=str(site["models"] / "Llama-3.1-8B"),
                  base_checkpoint=str(site["models"] / "Llama-3.1-8B-nemo"), checkpoint_dir="")
    assert [p for p in run_preflight(local, FS) if p.severity == "error"] == []


def test_checkpoint_dir_resume_or_fresh(site: dict[str, Path]) -> None:
    ck = site["runs"] / "run1" / "checkpoints"
    ck.mkdir(parents=True)
    (ck / "step=15").mkdir()
    for undecided in (None, "auto"):  # a plain rerun must neither silently continue nor silently restart
        p = by_where(run_preflight(facts(site, resume=undecided), FS))["--resume/--fresh"]
        assert p.severity == "error" and "decide: --resume" in p.message and "--fresh" in p.message
    assert "--resume/--fresh" not in by_where(run_preflight(facts(site, resume="resume"), FS))
    fresh = by_where(run_preflight(facts(site, resume="fresh"), FS))["checkpoint_dir /results/run1/checkpoints"]
    assert fresh.severity == "warning" and "moved aside" in fresh.message


def test_memory_fits_or_not(site: dict[str, Path]) -> None:
    m = estimate(M8, MemoryConfig(recompute="full", strategy="mcore_cpu_offload"))
    w = by_where(run_preflight(facts(site, memory=m, capacity_gib=47.5), FS))
    assert "mcore_cpu_offload" in w["memory"].message and "setup" in w["memory"].message
    ok = estimate(M8, MemoryConfig(recompute="full", strategy="host_master"))
    assert "memory" not in by_where(run_preflight(facts(site, memory=ok, capacity_gib=47.5, host_need_gib=136,
                                                          host_capacity_gib=251), FS))
    w = by_where(run_preflight(facts(site, predicted_peak_gib=50.0, capacity_gib=47.5, strategy="gpu"), FS))
    assert "50.0 GiB" in w["memory"].message


def test_filesystem_false_runs_only_pure_checks(site: dict[str, Path]) -> None:
    f = facts(site, train_data=[(1.0, "/data/missing_text_document")], container_image="",
              env={"NVTE_FUSED_ATTN": "0"})
    wheres = set(by_where(run_preflight(f, FS, filesystem=False)))
    assert wheres == {"container.image", "env NVTE_FUSED_ATTN"}


def test_check_plan_on_a_real_launch_plan(tmp_path: Path) -> None:
    """The adapter against the launcher's own plan for the workstation profile (paths redirected to tmp)."""
    from launcher import preflight
    from launcher.plan import Overrides, PlanContext, build_plan
    from launcher.profiles import load_profile

    profile = load_profile(str(Path(__file__).resolve().parent.parent / "clusters" / "workstation-48gb.yaml"))
    models = tmp_path / "models"
    hf_model_dir(models / "Llama-3.1-8B")
    data = tmp_path / "data"
    data.mkdir()
    write_indexed(data / "ja_text_document", [[1, 2, 3]] * 10)
    ov = Overrides(data=(str(data / "ja_text_document"),), valid_data=(str(data / "ja_text_document"),),
                   model_dir=str(models / "Llama-3.1-8B"), max_steps=2, gbs=8, seq_length=1024)
    plan = build_plan(profile, ov, PlanContext(code_dir=str(tmp_path), command="test", run_name="t1"))
    problems = preflight.check_plan(plan, env={"HF_TOKEN": PLANTED_TOKEN})
    assert all(PLANTED_TOKEN not in str(p) for p in problems)
    wheres = {p.where for p in problems if p.severity == "error"}
    assert not any(w.startswith(("--data", "valid_data", "env HF", "memory", "parallelism", "--tp")) for w in wheres)
    data_warn = [p for p in problems if p.where.startswith("--data")]
    assert data_warn and "30 tokens" in data_warn[0].message  # 2 steps x 8 x 1024 tokens from 30: repeats


def test_read_idx_on_the_data_stage_output(request: pytest.FixtureRequest) -> None:
    """A real pair written by the data stage (Llama-3.1 tokenizer, Japanese text): our reader agrees with it."""
    data = pytest.importorskip("launcher.data")
    if not hasattr(data, "tokenize_jsonl"):
        pytest.skip("launcher.data.tokenize_jsonl has not landed yet")
    prefix = str(request.getfixturevalue("japanese_token_prefix"))
    info = read_idx(FS, prefix + ".idx")
    assert info.dtype_code == 4  # int32: the Llama-3 vocabulary (128256) does not fit uint16
    assert info.num_sequences > 1000 and info.num_tokens > 100_000
    assert Path(prefix + ".bin").stat().st_size == info.num_tokens * info.itemsize
    if hasattr(data, "count_tokens"):
        assert data.count_tokens(prefix) == info.num_tokens


def test_random_init_needs_the_tokenizer_only(site: dict[str, Path]) -> None:
    """--random-init: no HF weights (config.json) and no converted checkpoint are needed, the tokenizer still is."""
    tok = site["models"] / "tok-only"
    tok.mkdir()
    (tok / "tokenizer.json").write_text("{}")
    f = facts(site, random_init=True, tokenizer_dir="/models/tok-only", hf_model_dir="/models/tok-only",
              base_checkpoint="", download_planned=False, convert_planned=False)
    assert not [p for p in run_preflight(f, FS) if p.severity == "error"]
    # the same without --random-init: the base model is missing and nothing is planned to fetch it
    w = by_where(run_preflight(dataclasses.replace(f, random_init=False), FS))
    assert "no Hugging Face model" in w["hf_model_dir /models/tok-only"].message
    # and with --random-init but no tokenizer either: the tokenizer error, naming the directory
    f2 = dataclasses.replace(f, tokenizer_dir="/models/nowhere", hf_model_dir="/models/nowhere")
    assert "GPT-2" in by_where(run_preflight(f2, FS))["tokenizer_dir /models/nowhere"].message


def _local_plan(tmp_path: Path, profile: str, model_dir: bool = True):  # type: ignore[no-untyped-def]
    from launcher.plan import Overrides, PlanContext, build_plan
    from launcher.profiles import load_profile

    prof = load_profile(str(Path(__file__).resolve().parent.parent / "clusters" / f"{profile}.yaml"))
    ov = Overrides(data=("ja/*.jsonl",), valid_data=("ja/valid.jsonl",),
                   model_dir=str(tmp_path / "m") if model_dir else None)
    return build_plan(prof, ov, PlanContext(code_dir=str(Path(__file__).resolve().parent.parent), command="t",
                                            run_name="t1"))


def _path_with_python(bin_dir: Path) -> str:
    """PATH with this environment's bin directory first (a symlink elsewhere would lose the venv: Python finds
    pyvenv.cfg next to the path it was started from)."""
    assert (bin_dir / "python3").exists(), bin_dir
    return f"{bin_dir}:/usr/bin:/bin"


@pytest.mark.parametrize("profile", ["workstation-48gb", "single-node"])
def test_a_job_python_without_nemo_is_refused_before_the_run(tmp_path: Path, profile: str) -> None:
    """Local profiles run the stages with the python3 on PATH: a bare virtualenv (no NeMo, no numpy) is an error
    for every stage that needs them, named with the interpreter's path; single-node also needs torchrun."""
    import subprocess

    from launcher.preflight import check_job_python

    bare = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    path = _path_with_python(bare / "bin")
    problems = {p.where: p.message for p in check_job_python(_local_plan(tmp_path, profile), {"PATH": path})}
    assert "cannot import torch, nemo, megatron.core, lightning" in problems["job python (train stage)"]
    assert "cannot import numpy, tokenizers" in problems["job python (tokenize stage)"]
    assert "job python (download stage)" not in problems  # --model-dir: the download stage is skipped
    downloading = check_job_python(_local_plan(tmp_path, profile, model_dir=False), {"PATH": path})
    assert "huggingface_hub" in {p.where: p.message for p in downloading}["job python (download stage)"]
    assert str(bare / "bin" / "python3") in problems["job python (train stage)"]
    assert ("job torchrun" in problems) is (profile == "single-node")
    # no python3 at all on PATH
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "not found on PATH" in check_job_python(_local_plan(tmp_path, profile), {"PATH": str(empty)})[0].message


def test_container_and_slurm_profiles_are_not_probed(tmp_path: Path) -> None:
    from launcher.preflight import check_job_python

    for profile in ("dgx-h100", "local-docker"):
        assert check_job_python(_local_plan(tmp_path, profile), {"PATH": "/nonexistent"}) == []


def test_the_environment_with_nemo_passes(tmp_path: Path) -> None:
    """This test's own interpreter, when it has NeMo and the data extra (CI installs both), passes the probe."""
    pytest.importorskip("nemo", reason="needs the [nemo] extra")
    pytest.importorskip("tokenizers", reason="needs the [data] extra")
    from launcher.preflight import check_job_python

    path = _path_with_python(Path(sys.executable).parent)
    assert check_job_python(_local_plan(tmp_path, "workstation-48gb"), {"PATH": path}) == []


def _fake_nvidia_smi(bin_dir: Path, gpus: int) -> str:
    """The one stand-in here: this machine has no NVIDIA GPU, so `nvidia-smi -L` is a script listing ``gpus``."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    smi = bin_dir / "nvidia-smi"
    smi.write_text("#!/bin/sh\n" + "".join(f'echo "GPU {i}: NVIDIA H100 80GB HBM3 (UUID: GPU-{i:08d})"\n'
                                           for i in range(gpus)))
    smi.chmod(0o755)
    return f"{bin_dir}:/usr/bin:/bin"


def test_local_training_needs_the_gpus_here(tmp_path: Path) -> None:
    """Found before the CPU stages run for an hour: no driver, too few GPUs, CUDA_VISIBLE_DEVICES narrowing."""
    import shutil

    from launcher.preflight import check_local_gpus

    ws, sn = _local_plan(tmp_path, "workstation-48gb"), _local_plan(tmp_path, "single-node")
    if shutil.which("nvidia-smi") is None:  # this machine, for real: no driver at all
        p = check_local_gpus(ws, {"PATH": os.environ.get("PATH", "")})
        assert len(p) == 1 and "nvidia-smi is not on PATH" in p[0].message
    assert check_local_gpus(ws, {"PATH": _fake_nvidia_smi(tmp_path / "one", 1)}) == []
    eight = _fake_nvidia_smi(tmp_path / "eight", 8)
    assert check_local_gpus(sn, {"PATH": eight}) == []
    p = check_local_gpus(sn, {"PATH": _fake_nvidia_smi(tmp_path / "four", 4)})
    assert "needs 8 GPU(s)" in p[0].message and "4 are usable here (4 listed by nvidia-smi)" in p[0].message
    p = check_local_gpus(sn, {"PATH": eight, "CUDA_VISIBLE_DEVICES": "0,1"})
    assert "2 are usable here" in p[0].message and "CUDA_VISIBLE_DEVICES='0,1'" in p[0].message
    # Slurm profiles are never probed on the login node
    assert check_local_gpus(_local_plan(tmp_path, "dgx-h100"), {"PATH": ""}) == []


class _FreeSpace(RealFileSystem):
    """The real filesystem with a stated amount of free space: this machine's disk is not the size under test."""

    def __init__(self, free: int) -> None:
        self.free = free

    def free_bytes(self, path: str) -> int | None:
        return self.free


def test_checkpoints_that_do_not_fit_the_disk_are_refused_before_the_queue(site: dict[str, Path]) -> None:
    from launcher.checkpoints import checkpoint_bytes

    m8 = dataclasses.replace(M8, num_layers=8)
    one = checkpoint_bytes(m8)
    assert abs(one / 2**30 - 36.5) < 0.2  # measured on the H200: 36.5 GiB for 8 layers of the 8B shape
    assert abs(checkpoint_bytes(dataclasses.replace(M8, num_layers=4)) / 2**30 - 25.1) < 0.2  # measured: 25.1
    tied = dataclasses.replace(MODELS["llama3.2-1b"], num_layers=4)
    assert abs(checkpoint_bytes(tied) / 2**30 - 7.6) < 0.1  # measured: 7.6 (du) for 4 layers of the 3.2-1B shape
    f = facts(site, model=m8, checkpoint_bytes=one, ckpt_keep=2)
    where = "checkpoint_dir /results/run1/checkpoints"
    # the H200's 64 GiB disk: keep 2 + one in flight is 3 x 36.5 GiB; even keep 1 + one in flight does not fit
    p = by_where(run_preflight(f, _FreeSpace(63 * 2**30)))[where]
    assert p.severity == "error"
    for part in ("36.5 GiB", "--ckpt-keep 2", "need 109.5 GiB", "63.0 GiB free", "--num-layers"):
        assert part in p.message, (part, p.message)
    assert "--ckpt-keep 1" not in p.message
    assert "fix: --ckpt-keep 1 or" in by_where(run_preflight(f, _FreeSpace(100 * 2**30)))[where].message
    assert where not in by_where(run_preflight(dataclasses.replace(f, ckpt_keep=1), _FreeSpace(74 * 2**30)))
    # a resumed run's finished checkpoints already take their space (links and unfinished ones do not count)
    ck = site["runs"] / "run1" / "checkpoints"
    ck.mkdir(parents=True)
    for name in ("r--step=9-consumed_samples=80.0", "r--step=19-consumed_samples=160.0"):
        (ck / name).mkdir()
    (ck / "r--step=19-consumed_samples=160.0-last").symlink_to(ck / "r--step=19-consumed_samples=160.0")
    resumed = dataclasses.replace(f, resume="resume")
    assert where not in by_where(run_preflight(resumed, _FreeSpace(37 * 2**30)))
    assert where in by_where(run_preflight(resumed, _FreeSpace(30 * 2**30)))


def test_the_plan_keeps_as_many_checkpoints_as_fit(tmp_path: Path) -> None:
    from launcher.checkpoints import checkpoint_bytes
    from launcher.plan import Overrides, PlanContext, build_plan
    from launcher.profiles import load_profile

    prof = load_profile(str(Path(__file__).resolve().parent.parent / "benchmarks" / "train" / "h200-device.yaml"))
    ov = Overrides(num_layers=8, random_init=True, model_dir=str(tmp_path))

    def keep(free: int | None, **kw: object) -> int:
        ctx = PlanContext(code_dir="/src", command="t", run_name="k", ckpt_free_bytes=free)
        return build_plan(prof, dataclasses.replace(ov, **kw), ctx).jobspec.train.ckpt_keep  # type: ignore[arg-type]

    one = checkpoint_bytes(dataclasses.replace(M8, num_layers=8))
    assert keep(None) == 2  # not looked at (a dry run): the default
    assert keep(3 * one) == 2 and keep(2 * one + 1) == 1 and keep(one) == 1
    assert keep(one, ckpt_keep=3) == 3  # a pinned keep is kept, and the pre-flight judges it
