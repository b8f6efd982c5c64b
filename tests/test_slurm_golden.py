"""The sbatch scripts nemo_run's SlurmExecutor submits for dgx-h100 (Pyxis), compared with golden files.

Pyxis/enroot cannot run here, so the one seam patched is the tunnel's shell command: `sbatch` is recorded
instead of run, and the script nemo_run wrote is compared in full. Everything else (nemo_run's Experiment,
executors, templates, dependencies) runs for real.
Refresh after an intended change: CPT_UPDATE_GOLDEN=1 python -m pytest tests/test_slurm_golden.py
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from launcher.manifest import write_run_dir
from launcher.plan import Overrides, PlanContext, build_plan
from launcher.profiles import parse_profile

REPO = Path(__file__).resolve().parent.parent
GOLDEN = REPO / "tests" / "golden" / "nemo_run"
ROOT = "/tmp/cpt-golden"  # fixed, so the scripts are byte-stable


def _profile() -> Any:
    text = (REPO / "clusters" / "dgx-h100.yaml").read_text().replace("/lustre/cpt", ROOT)
    return parse_profile(text, "clusters/dgx-h100.yaml")


@pytest.mark.parametrize("nodes", [1, 2, 4, 8])
def test_dgx_h100_pyxis_scripts_match_golden(nodes: int, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("nemo_run")
    from nemo_run.core.tunnel.client import LocalTunnel

    from launcher.executors.slurm import NemoRunSlurm

    shutil.rmtree(ROOT, ignore_errors=True)
    monkeypatch.setenv("HF_TOKEN", "hf_PLANTEDSECRET0000")
    submitted: list[str] = []
    real_run = LocalTunnel.run

    order = ["download", "convert", "tokenize", "train", "export", "evaluate"]

    def stage_of(command: str) -> str:
        found = [n for n in order if re.search(rf"[/._-]{n}(?:[/._-]|$)", command.split()[-1])]
        assert len(found) == 1, command
        return found[0]

    def fake_run(self: Any, command: str, *a: Any, **kw: Any) -> Any:
        if command.startswith("sbatch"):
            # nemo_run submits convert and tokenize (one dependency level) from a thread pool, in either order:
            # job ids by stage, not by arrival, so the goldens do not depend on the race
            submitted.append(command)
            return SimpleNamespace(stdout=f"{1001 + order.index(stage_of(command))}\n", stderr="", return_code=0)
        if command.startswith(("sacct", "squeue")):  # no cluster here: nothing is known about the jobs yet
            return SimpleNamespace(stdout="", stderr="", return_code=0)
        return real_run(self, command, *a, **kw)

    monkeypatch.setattr(LocalTunnel, "run", fake_run)
    ctx = PlanContext(code_dir="/src/cpt-launch", command=f"cpt-launch --cluster dgx-h100 --nodes {nodes}",
                      run_name=f"golden-{nodes}n")
    plan = build_plan(_profile(), Overrides(nodes=nodes), ctx)
    manifest = NemoRunSlurm().submit(plan, write_run_dir(plan, "nemo-run-slurm"))
    try:
        assert [r.job_id for r in manifest.stages.values()] == ["1001", "1002", "1003", "1004", "1005", "1006"]
        # afterok chaining, in the order nemo_run submitted
        by_stage = {stage_of(c): c for c in submitted}
        assert sorted(by_stage, key=order.index) == order and len(submitted) == 6
        deps = {n: re.findall(r"--dependency=(\S+)", c) for n, c in by_stage.items()}
        assert deps == {"download": [], "convert": ["afterok:1001"], "tokenize": ["afterok:1001"],
                        "train": ["afterok:1002:1003"], "export": ["afterok:1004"], "evaluate": ["afterok:1005"]}
        texts = {}
        for name, cmd in by_stage.items():
            script = Path(cmd.split()[-1]).read_text()
            assert "hf_PLANTEDSECRET0000" not in script
            texts[name] = re.sub(r"golden-\dn_\d{10,}", "<EXP_ID>", script)
        train = texts["train"]
        assert f"#SBATCH --nodes={nodes}" in train and "#SBATCH --ntasks-per-node=8" in train
        assert "--container-image nvcr.io/nvidia/nemo:25.02.01" in train
        assert "--container-env HF_TOKEN,WANDB_API_KEY" in train
        assert f"--container-mounts {ROOT}/runs:/results,{ROOT}/models:/models" in train
        assert "#SBATCH --gres" not in texts["download"] and "#SBATCH --partition=cpu" in texts["download"]
        # evaluate: one GPU of one node, not the whole node the profile's exclusive/mem=0 would hold
        assert "#SBATCH --gres=gpu:1" in texts["evaluate"] and "#SBATCH --exclusive" not in texts["evaluate"]
        assert "#SBATCH --mem" not in texts["evaluate"] and "#SBATCH --nodes=1" in texts["evaluate"]
        for name, text in texts.items():
            gold = GOLDEN / f"dgx-h100-{nodes}n-{name}.sbatch"
            if os.environ.get("CPT_UPDATE_GOLDEN"):
                gold.parent.mkdir(parents=True, exist_ok=True)
                gold.write_text(text)
            assert gold.is_file(), f"missing golden file {gold}; create with CPT_UPDATE_GOLDEN=1"
            assert text == gold.read_text(), f"{gold} differs (refresh with CPT_UPDATE_GOLDEN=1 if intended)"
    finally:
        shutil.rmtree(ROOT, ignore_errors=True)
