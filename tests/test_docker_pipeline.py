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
                        "--seq-length", "256", "--num-layers", "1"], capture_output=True, text=True, cwd=REPO, timeout=300,
                       env={**os.environ, "HF_TOKEN": SECRET, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 4, r.stderr  # a stage failed: exit 4
    run_dir = tmp_path / "runs" / "dk"
    st = json.loads(subprocess.run([sys.executable, "-m", "launcher.cli", "status", str(run_dir), "--json"],
                                   capture_output=True, text=True, cwd=REPO, check=True).stdout)
    states = {n: s["state"] for n, s in st["stages"].items()}
    assert states == {"download": "COMPLETED", "convert": "FAILED", "train": "CANCELLED", "export": "CANCELLED",
                      "evaluate": "CANCELLED"}
    log = (run_dir / "logs" / "download.log").read_text()
    # the path is the container's: the stage really ran inside the container, on the mounted model dir
    assert "/workspace/models/Llama-3.1-8B already holds a complete model" in log
    assert "No module named" in (run_dir / "logs" / "convert.log").read_text()
    assert "not forwarded into the container" in r.stderr
    for f in run_dir.rglob("*"):
        if f.is_file():
            assert SECRET not in f.read_text(errors="replace"), f


def _docker_submit(plan: Any) -> None:  # the launcher process (forked)
    from launcher.executors.local import NemoRunLocal
    from launcher.manifest import write_run_dir

    backend = NemoRunLocal(docker=True)
    backend.submit(plan, write_run_dir(plan, backend.name))
    os._exit(0)


def test_cancel_stops_the_stage_inside_the_container(docker_image: str, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """`cpt-launch cancel RUN` of a run whose stage runs in a container: the processes are found by the
    CPT_RUN_DIR their stage script exports (the container's path), stopped, and the container is gone."""
    import dataclasses
    import multiprocessing
    import time

    from launcher.cli import main
    from launcher.executors.local import NemoRunLocal
    from launcher.plan import Overrides, PlanContext, build_plan, render_stage_script
    from launcher.profiles import parse_profile
    from tests.fixtures.processes import wait_for_lines

    text = (REPO / "clusters" / "local-docker.yaml").read_text()
    text = (text.replace("/data/cpt", str(tmp_path)).replace("nvcr.io/nvidia/nemo:25.02.01", docker_image)
            .replace("runtime: nvidia", "runtime: null").replace("num_gpus: -1", "num_gpus: 0")
            .replace('ulimits: ["memlock:-1", "stack:67108864"]', "ulimits: []"))
    for d in ("runs", "data", "models", "hf_cache"):
        (tmp_path / d).mkdir()
    profile = parse_profile(text, str(tmp_path / "docker.yaml"))
    run = f"dkcancel-{os.getpid()}"
    plan = build_plan(profile, Overrides(run_name=run, data=("ja_text_document",),
                                         valid_data=("ja_text_document",), max_steps=2, gbs=8, seq_length=256),
                      PlanContext(code_dir=str(REPO), command="pytest", run_name=run))
    steps_job = f"{plan.job_run_dir}/steps.log"  # the container's view of the run dir
    loop = ["python3", "-c", "import sys, time\nwhile True:\n    open(sys.argv[1], 'a').write('step\\n')\n"
                             "    time.sleep(0.2)\n", steps_job]
    train = plan.stage("train")
    script = render_stage_script(run=plan.run, stage="train", cmds=[loop], env=dict(plan.env), secrets=(),
                                 workdir=plan.job_run_dir, command="pytest")
    plan = dataclasses.replace(plan, stages=(dataclasses.replace(train, script=script, command=tuple(loop),
                                                                 depends_on=()),))
    steps = Path(plan.run_dir) / "steps.log"
    before = set(subprocess.run(["docker", "ps", "-q"], capture_output=True, text=True).stdout.split())
    monkeypatch.setattr(NemoRunLocal, "grace_s", 10.0)
    child = multiprocessing.get_context("fork").Process(target=_docker_submit, args=(plan,))
    child.start()
    try:
        wait_for_lines(steps, 3, child.is_alive, "the stage never ran in the container")
        ours = set(subprocess.run(["docker", "ps", "-q"], capture_output=True, text=True).stdout.split()) - before
        assert ours, "no container of this run is running"
        assert main(["cancel", plan.run_dir]) == 0
        child.join(60)
        assert not child.is_alive() and child.exitcode == 0
        running = set(subprocess.run(["docker", "ps", "-q"], capture_output=True, text=True).stdout.split())
        assert not (ours & running), "the run's container is still running"
        n = len(steps.read_text().splitlines())
        time.sleep(1.0)
        assert len(steps.read_text().splitlines()) == n
        st = json.loads((Path(plan.run_dir) / "manifest.json").read_text())
        assert st["stages"]["train"]["state"] == "CANCELLED"
    finally:
        if child.is_alive():
            child.kill()
        for cid in set(subprocess.run(["docker", "ps", "-q"], capture_output=True, text=True).stdout.split()) - before:
            subprocess.run(["docker", "kill", cid], capture_output=True)
