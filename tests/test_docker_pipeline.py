"""A real stage through nemo_run's DockerExecutor on the real dockerd (.ci/docker/setup.sh).

The local-docker profile is used with the test image (python3 only, no GPU runtime, no memlock ulimit: this
sandbox refuses it): download runs for real inside the container and succeeds; convert needs NeMo, which the test
image lacks, so it fails and everything after it is cancelled (afterok), visible through status and logs.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.docker
REPO = Path(__file__).resolve().parent.parent
SECRET = "hf_DOCKERplantedSECRET7"


def test_stage_runs_inside_a_docker_container(docker_image: str, tmp_path: Path) -> None:
    text = (REPO / "clusters" / "local-docker.yaml").read_text()
    text = (text.replace("/data/cpt", str(tmp_path)).replace("nvcr.io/nvidia/nemo:25.02.01", docker_image)
            .replace("runtime: nvidia", "runtime: null").replace("num_gpus: -1", "num_gpus: 0")
            .replace('ulimits: ["memlock:-1", "stack:67108864"]', "ulimits: []"))
    prof = tmp_path / "docker.yaml"
    prof.write_text(text)
    m = tmp_path / "models" / "Llama-3.1-8B"
    m.mkdir(parents=True)
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (m / name).write_text("{}")
    (m / "model.safetensors").write_bytes(struct.pack("<Q", 2) + b"{}")
    for d in ("runs", "data", "hf_cache"):
        (tmp_path / d).mkdir()
    prefix = tmp_path / "data" / "ja_text_document"
    prefix.with_suffix(".bin").write_bytes(struct.pack("<3i", 5, 6, 7))
    prefix.with_suffix(".idx").write_bytes(b"MMIDIDX\x00\x00" + struct.pack("<QBQQ", 1, 4, 1, 2)
                                           + struct.pack("<i", 3) + struct.pack("<q", 0) + struct.pack("<2q", 0, 1))
    r = subprocess.run([sys.executable, "-m", "launcher.cli", "--cluster", str(prof), "--run-name", "dk",
                        "--data", str(prefix), "--valid-data", str(prefix), "--max-steps", "1", "--gbs", "8",
                        "--seq-length", "256"], capture_output=True, text=True, cwd=REPO, timeout=300,
                       env={**os.environ, "HF_TOKEN": SECRET, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 4, r.stderr  # a stage failed: exit 4
    run_dir = tmp_path / "runs" / "dk"
    st = json.loads(subprocess.run([sys.executable, "-m", "launcher.cli", "status", str(run_dir), "--json"],
                                   capture_output=True, text=True, cwd=REPO, check=True).stdout)
    states = {n: s["state"] for n, s in st["stages"].items()}
    assert states == {"download": "COMPLETED", "convert": "FAILED", "train": "CANCELLED", "export": "CANCELLED"}
    log = (run_dir / "logs" / "download.log").read_text()
    # the path is the container's: the stage really ran inside the container, on the mounted model dir
    assert "/workspace/models/Llama-3.1-8B already holds a complete model" in log
    assert "No module named" in (run_dir / "logs" / "convert.log").read_text()
    assert "not forwarded into the container" in r.stderr
    for f in run_dir.rglob("*"):
        if f.is_file():
            assert SECRET not in f.read_text(errors="replace"), f
