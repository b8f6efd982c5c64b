"""Before submission: the evaluate stage's --lm-eval datasets must already be in the HF cache the job will read.

The check runs ``python -m launcher.evaluate.harness check`` in a subprocess (``datasets`` reads the offline
variables when it is imported, and the launcher's own process must stay free of it), with ``HF_HOME`` set to the
host side of the profile's ``hf_cache`` area (the job sees it at its container path), or the submitting shell's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Mapping

from launcher.errors import Problem


def check_lm_eval_datasets(plan: Any, env: Mapping[str, str], timeout: float = 600) -> list[Problem]:
    """One error per lm-eval task whose dataset cannot load offline; [] when the plan has no --lm-eval."""
    tasks = tuple(getattr(plan, "lm_eval_tasks", ()))
    if not tasks:
        return []
    hf = plan.profile.storage.hf_cache
    run_env = {**env, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    if hf is not None:
        run_env["HF_HOME"] = hf.host
    # this checkout's launcher package, whatever the submitting shell's working directory
    code = str(Path(__file__).resolve().parents[2])
    run_env["PYTHONPATH"] = code + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    where = f"HF_HOME={run_env.get('HF_HOME', '~/.cache/huggingface')}"
    try:
        r = subprocess.run([sys.executable, "-m", "launcher.evaluate.harness", "check", ",".join(tasks)],
                           capture_output=True, text=True, timeout=timeout, env=run_env)
        answer = json.loads(r.stdout.strip().splitlines()[-1]) if r.stdout.strip() else {}
    except (OSError, subprocess.TimeoutExpired, ValueError) as e:
        return [Problem("error", "--lm-eval", f"could not check the tasks' datasets ({e})")]
    if "error" in answer:
        return [Problem("error", "--lm-eval", f"cannot check {','.join(tasks)}: {answer['error']}")]
    if r.returncode not in (0, 2) or "missing" not in answer:
        return [Problem("error", "--lm-eval", f"the dataset check failed (exit {r.returncode}): "
                                              f"{r.stderr.strip()[-500:]}")]
    return [Problem("error", f"--lm-eval {task}", f"{why}; the job has no network: fill {where} first on a "
                                                  "machine that has (e.g. run the task once there with --limit 1)")
            for task, why in answer["missing"].items()]
