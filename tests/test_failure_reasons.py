"""A stage that fails is recorded FAILED with a reason a person can act on, never left RUNNING."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from launcher.executors.local import NemoRunLocal
from launcher.manifest import Manifest, StageRecord, failure_reason


def test_the_reason_names_a_full_disk_an_oom_or_the_last_error(tmp_path: Path) -> None:
    log = tmp_path / "train.log"
    log.write_text("step 29\n[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598\nTraceback\n")
    assert "disk full" in failure_reason(log)
    log.write_text("OSError: [Errno 28] No space left on device: '/ckpt/x'\n")
    assert failure_reason(log) == "disk full (No space left on device)"
    log.write_text("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 3.91 GiB\n")
    assert failure_reason(log) == "GPU out of memory"
    log.write_text("a\nValueError: apply_rope_fusion is not available. Please install TE >= 1.4.\nb\n")
    assert failure_reason(log) == "ValueError: apply_rope_fusion is not available. Please install TE >= 1.4."
    assert failure_reason(tmp_path / "absent.log") == ""


def test_a_stage_whose_launcher_died_is_failed_with_its_reason(tmp_path: Path) -> None:
    # a launcher killed with -9 mid-run (or whose disk filled) recorded nothing more: status must not say RUNNING
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    log = tmp_path / "train.log"
    log.write_text("OSError: [Errno 28] No space left on device\n")
    m = Manifest(run="r", cluster="c", backend="nemo-run-local", run_dir=str(tmp_path), created=0.0,
                 stages={"train": StageRecord(name="train", job_id=f"local:{dead.pid}:train", state="RUNNING",
                                              log=str(log))})
    rec = NemoRunLocal().refresh(m).stages["train"]
    assert rec.state == "FAILED"
    assert f"pid {dead.pid}" in rec.reason and "No space left on device" in rec.reason
    m.save()  # and the manifest keeps it
    assert Manifest.from_json(__import__("json").loads((tmp_path / "manifest.json").read_text())).stages[
        "train"].reason == rec.reason
