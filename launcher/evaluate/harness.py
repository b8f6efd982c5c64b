"""lm-evaluation-harness tasks by name (``--lm-eval TASKS``), run in-process on the loaded HF model.

Jobs on clusters have no internet, so a task whose dataset is not already in the HF cache would fail after the
queue (and after the model loaded). ``missing_datasets`` loads each task the way the harness will, with
``HF_DATASETS_OFFLINE=1``/``HF_HUB_OFFLINE=1``, and names the ones that fail. It runs before the models load, and
before submission (``python -m launcher.evaluate.harness check TASKS``, a subprocess: the offline variables must be
set before ``datasets`` is imported, and the launcher's process must not import it).

Local tasks: ``--lm-eval-include DIR`` adds a directory of task YAMLs (e.g. ``dataset_path: json`` with
``dataset_kwargs: {data_files: ...}``), as the harness's ``--include_path`` does.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import sys
from typing import Any

OFFLINE_ENV = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
EXIT_MISSING = 2
EXIT_NO_HARNESS = 3


def set_offline(env: Any = os.environ) -> None:
    """The job has no network: make datasets/huggingface_hub read only the cache (before they are imported)."""
    for k, v in OFFLINE_ENV.items():
        env[k] = v


def task_names(value: str) -> list[str]:
    """``"a,b, c"`` -> ["a", "b", "c"]."""
    return [t.strip() for t in value.split(",") if t.strip()]


def task_manager(include: list[str] | None = None) -> Any:
    """The harness's task index (one per include list and process: building it parses ~14,000 YAML files, about 20 s)."""
    return _task_manager(tuple(include or ()))


@functools.lru_cache(maxsize=4)
def _task_manager(include: tuple[str, ...]) -> Any:
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=list(include) if include else None)


def _leaves(tm: Any, spec: Any, seen: set[str]) -> list[Any]:
    """A task, group or tag name (or an inline task dict of a group) -> the leaf task specs it stands for."""
    from lm_eval.tasks._index import Kind

    if isinstance(spec, dict):
        if "group" in spec:
            return [x for s in spec.get("task", []) for x in _leaves(tm, s, seen)]
        return [spec]
    entry = tm.task_index.get(spec)
    if entry is None or spec in seen:
        return [] if entry is not None else [("unknown", spec)]
    seen.add(spec)
    if entry.kind == Kind.GROUP:
        return [x for s in (entry.cfg or {}).get("task", []) for x in _leaves(tm, s, seen)]
    if entry.kind == Kind.TAG:
        return [x for s in sorted(entry.tags) for x in _leaves(tm, s, seen)]
    return [spec]


def _dataset_of(tm: Any, spec: Any) -> str:
    cfg = spec if isinstance(spec, dict) else (tm.task_index[spec].cfg or {})
    path, name = cfg.get("dataset_path", "?"), cfg.get("dataset_name")
    files = (cfg.get("dataset_kwargs") or {}).get("data_files")
    return f"{path}" + (f" ({name})" if name else "") + (f" data_files={files}" if files else "")


def missing_datasets(names: list[str], include: list[str] | None = None) -> dict[str, str]:
    """{task: why} for every leaf task of ``names`` that cannot load offline; unknown names are reported too."""
    set_offline()
    tm = task_manager(include)
    missing: dict[str, str] = {}
    for name in names:
        for leaf in _leaves(tm, name, set()):
            if isinstance(leaf, tuple):
                missing[leaf[1]] = "no such task, group or tag in lm-eval" + (f" or {include}" if include else "")
                continue
            label = leaf if isinstance(leaf, str) else str(leaf.get("task"))
            try:
                tm.load([leaf])  # builds the Task: the harness's own datasets.load_dataset call
            except Exception as e:  # any failure means the job would fail the same way
                why = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
                missing[label] = f"dataset {_dataset_of(tm, leaf)} not loadable offline: {type(e).__name__}: {why}"
    return missing


def _numeric(d: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in d.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def run_tasks(model: Any, tokenizer: Any, names: list[str], *, include: list[str] | None, batch_size: int,
              limit: int | None, device: str) -> dict[str, dict[str, float]]:
    """{task: {metric: value}} from ``lm_eval.simple_evaluate`` on the already loaded model."""
    set_offline()
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=device)
    res = simple_evaluate(model=lm, tasks=names, task_manager=task_manager(include), limit=limit,
                          log_samples=False, bootstrap_iters=0)
    if res is None:  # only non-zero ranks of a distributed run get None
        return {}
    return {task: _numeric(metrics) for task, metrics in sorted(res["results"].items())}


def main(argv: list[str] | None = None) -> int:
    """``python -m launcher.evaluate.harness check TASKS [--include DIR]``: JSON {"missing": {task: why}}."""
    ap = argparse.ArgumentParser(prog="python -m launcher.evaluate.harness")
    ap.add_argument("action", choices=("check",))
    ap.add_argument("tasks", help="comma-separated lm-eval task, group or tag names")
    ap.add_argument("--include", action="append", default=[], metavar="DIR", help="more task YAMLs")
    a = ap.parse_args(argv)
    logging.disable(logging.WARNING)  # the harness logs every task it builds; the JSON is the answer
    try:
        missing = missing_datasets(task_names(a.tasks), a.include)
    except ImportError as e:
        print(json.dumps({"error": f"lm-evaluation-harness is not installed here ({e}); fix: pip install -e "
                                   "'.[eval]'"}))
        return EXIT_NO_HARNESS
    print(json.dumps({"missing": missing}, ensure_ascii=False))
    return EXIT_MISSING if missing else 0


if __name__ == "__main__":
    sys.exit(main())
