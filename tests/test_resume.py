"""The pure resume rule (launcher.resume.decide_resume): which weights a train stage starts from."""

from __future__ import annotations

import pytest

from launcher.resume import checkpoint_step, decide_resume

BASE = "/models/llama31_8b_nemo"
# The checkpoint directory exactly as the H200 run left it (benchmarks/train/README.md, call 4), NeMo 2.7.3 names.
H200_LISTING = [
    "model_name=0--step=19-consumed_samples=160.0",
    "model_name=0--step=29-consumed_samples=240.0",
    "model_name=0--step=39-consumed_samples=320.0",
    "model_name=0--step=39-consumed_samples=320.0-last",
    "model_name=0--step=9-consumed_samples=80.0",
]


def test_empty_dir_restores_base() -> None:
    d = decide_resume([], BASE)
    assert (d.source, d.path, d.step, d.ok) == ("base_checkpoint", BASE, None, True)


def test_no_base_is_refused_unless_random_init_is_asked_for() -> None:
    assert decide_resume([], "").source == "refuse"
    assert decide_resume([], None).source == "refuse"
    d = decide_resume([], "", allow_random_init=True)
    assert d.source == "random_init" and "NO BASE CHECKPOINT" in d.reason


def test_own_last_checkpoint_wins_over_base() -> None:
    d = decide_resume(H200_LISTING, BASE)
    assert d.source == "own_checkpoint"
    assert d.path == "model_name=0--step=39-consumed_samples=320.0-last"
    assert d.step == 39


def test_checkpoints_without_last_are_not_resumable() -> None:
    # NeMo's AutoResume only looks at *last (and *end); top-k directories alone mean "no checkpoint".
    d = decide_resume([n for n in H200_LISTING if not n.endswith("-last")], BASE)
    assert d.source == "base_checkpoint"


def test_killed_during_async_save_resumes_from_the_finished_one() -> None:
    entries = [
        "cpt--step=19-consumed_samples=160.0",
        "cpt--step=19-consumed_samples=160.0-last",
        "cpt--step=29-consumed_samples=240.0",
        "cpt--step=29-consumed_samples=240.0-unfinished",
    ]
    d = decide_resume(entries, BASE)
    assert d.source == "own_checkpoint" and d.step == 19


def test_only_unfinished_last_is_refused_not_restarted_from_base() -> None:
    entries = ["cpt--step=29-consumed_samples=240.0-last", "cpt--step=29-consumed_samples=240.0-last-unfinished"]
    d = decide_resume(entries, BASE)
    assert d.source == "refuse" and not d.ok and "unfinished" in d.reason


def test_several_last_pick_the_highest_step() -> None:
    entries = ["cpt--step=9-consumed_samples=80.0-last", "cpt--step=109-consumed_samples=880.0-last",
               "cpt--step=99-consumed_samples=800.0-last"]
    assert decide_resume(entries, BASE).step == 109


def test_finished_run_is_refused() -> None:
    d = decide_resume(["cpt--step=149-consumed_samples=153600.0-end", "cpt--step=149-consumed_samples=153600.0-last"],
                      BASE)
    assert d.source == "refuse" and "completed" in d.reason


def test_ckpt_suffixes_and_trailing_slashes_are_ignored() -> None:
    d = decide_resume(["cpt--step=5-consumed_samples=40.0-last.ckpt/"], BASE)
    assert d.source == "own_checkpoint" and d.step == 5


@pytest.mark.parametrize("name,step", [
    ("cpt--step=19-consumed_samples=160.0-last", 19),
    ("model_name=0--step=9-consumed_samples=80.0", 9),
    ("no-step-here", None),
])
def test_checkpoint_step(name: str, step: int | None) -> None:
    assert checkpoint_step(name) == step
