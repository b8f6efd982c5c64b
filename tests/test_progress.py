"""`cpt-launch status`: train progress from a real GPU run's step log (benchmarks/train/results/d3/pipe), cut
short for a run that is still going, with a failed stage, and with the resumed second attempt."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from launcher.cli import main
from launcher.progress import eta_seconds, read_step_log, run_facts, train_progress
from tests.fixtures.gpu_run import REPO, make_run, step_lines

ATTEMPT1_LINES = 16  # steps 1..15 and the step-10 validation: where the GPU run was killed with -9


def _rows(n: int) -> list[dict]:
    return [json.loads(x) for x in step_lines()[:n]]


def _status(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    assert main(["status", *args]) == 0
    return capsys.readouterr().out


def test_running_run_shows_step_elapsed_eta_throughput_losses(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    rd, _ = make_run(tmp_path, lines=ATTEMPT1_LINES, states={"train": "RUNNING", "export": "PENDING"},
                     live_pid=os.getpid(), checkpoints=("pipe--step=9-consumed_samples=80.0",))
    out = _status(capsys, str(rd))
    train = [r for r in _rows(ATTEMPT1_LINES) if r["kind"] == "train"]
    per_step = (train[-1]["time"] - train[0]["time"]) / (train[-1]["step"] - train[0]["step"])
    eta = round(per_step * (40 - 15))
    assert "step 15 of 40 (38%)" in out
    assert f"ETA {eta // 60}m{eta % 60:02d}s" in out
    assert "loss 11.4" in out or f"loss {train[-1]['loss']:.4f}" in out
    assert "val loss valid 16.7719 (step 10)" in out
    assert "last checkpoint pipe--step=9-consumed_samples=80.0 (step 9)" in out
    assert "tokens/s/GPU" in out and "MFU " in out and "% (causal rule)" in out
    assert "  train     local:" in out and "RUNNING" in out


def test_eta_is_remaining_steps_times_the_recent_wall_clock_rate() -> None:
    rows = [{"kind": "train", "attempt": 1, "step": s, "time": 100.0 + 10 * s, "step_time_s": 2.0}
            for s in range(1, 31)]
    assert eta_seconds(rows, 100) == pytest.approx(10 * 70)
    # only the newest RATE_WINDOW steps count: a slow start is forgotten
    rows[0]["time"] = 0.0
    assert eta_seconds(rows, 100) == pytest.approx(10 * 70)
    # a resumed attempt: its own rate (5 s/step), not the gap since the killed attempt
    rows += [{"kind": "train", "attempt": 2, "step": s, "time": 5000.0 + 5 * s, "step_time_s": 1.0}
             for s in range(25, 28)]
    assert eta_seconds(rows, 100) == pytest.approx(5 * 73)
    # one step of a new attempt: its own step time is the only figure there is
    one = rows + [{"kind": "train", "attempt": 3, "step": 28, "time": 9000.0, "step_time_s": 7.0}]
    assert eta_seconds(one, 100) == pytest.approx(7 * 72)
    assert eta_seconds(rows, 27) == 0.0
    assert eta_seconds([], 100) is None


def test_failed_run_shows_its_reason_and_no_eta(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rd, _ = make_run(tmp_path, lines=ATTEMPT1_LINES, states={"train": "FAILED", "export": "CANCELLED"},
                     reasons={"train": "GPU out of memory"})
    out = _status(capsys, str(rd))
    assert "FAILED  (GPU out of memory)" in out
    assert "step 15 of 40" in out and "ETA -" in out
    d = json.loads(_status(capsys, str(rd), "--json"))
    assert d["train"]["state"] == "FAILED" and d["train"]["reason"] == "GPU out of memory"
    assert d["train"]["eta_s"] is None


def test_resumed_run_counts_attempts_and_the_newest_attempt_wins(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    rd, _ = make_run(tmp_path, checkpoints=("pipe--step=39-consumed_samples=320.0",))
    out = _status(capsys, str(rd))
    assert "step 40 of 40 (100%)" in out and "attempt 2" in out
    log = read_step_log(rd / "logs" / "train_steps.jsonl")
    latest = log.latest_train()
    assert [r["step"] for r in latest] == list(range(1, 41))  # steps 11..15 ran twice: once per attempt
    assert all(r["attempt"] == 2 for r in latest if r["step"] > 10)
    # the elapsed time runs from attempt 1's first step to the last line (the run has ended)
    rows = _rows(len(step_lines()))
    expected = rows[-1]["time"] - (rows[0]["time"] - rows[0]["step_time_s"])
    p = train_progress(json.loads((rd / "manifest.json").read_text()), run_facts(rd), log, now=time.time())
    assert p.elapsed_s == pytest.approx(expected)
    assert p.tokens == 320 * 8192  # consumed samples x seq length


def test_json_has_the_train_fields(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rd, _ = make_run(tmp_path, lines=30, states={"train": "RUNNING", "export": "PENDING"}, live_pid=os.getpid())
    d = json.loads(_status(capsys, str(rd), "--json"))
    assert set(d) >= {"run", "stages", "train"}
    t = d["train"]
    assert set(t) == {"state", "step", "max_steps", "elapsed_s", "eta_s", "tokens_per_s_per_gpu", "tokens", "loss",
                      "lr", "val_loss", "val_step", "last_checkpoint", "last_checkpoint_step", "attempts", "mfu",
                      "reason"}
    assert t["step"] == 23 and t["max_steps"] == 40 and t["attempts"] == 2 and t["state"] == "RUNNING"
    assert t["val_loss"] == {"valid": pytest.approx(10.788070678710938)} and t["val_step"] == 20
    # MFU = achieved causal TFLOP/s / the H200's dense bf16 peak, which plan.json names (989)
    att2 = [r for r in _rows(30) if r["kind"] == "train" and r["attempt"] == 2]
    tflops = sorted(r["tflops_per_gpu_causal"] for r in att2)
    med = (tflops[len(tflops) // 2] + tflops[(len(tflops) - 1) // 2]) / 2
    assert t["mfu"] == pytest.approx(med / 989.0)
    assert t["eta_s"] > 0


def test_named_validation_sets_each_have_a_last_loss(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rd, _ = make_run(tmp_path, lines=ATTEMPT1_LINES)
    with open(rd / "logs" / "train_steps.jsonl", "a") as f:
        f.write(json.dumps({"kind": "val", "attempt": 1, "step": 15, "val_loss": 2.5, "set": "ja"}) + "\n")
        f.write(json.dumps({"kind": "val", "attempt": 1, "step": 15, "val_loss": 3.25, "set": "en"}) + "\n")
        f.write('{"kind": "train", "attempt": 1, "step": 16, "lo')  # a kill -9 mid-line
    d = json.loads(_status(capsys, str(rd), "--json"))
    assert d["train"]["val_loss"] == {"en": 3.25, "ja": 2.5, "valid": pytest.approx(16.771936416625977)}
    assert d["train"]["step"] == 15


def test_queued_run_has_no_train_numbers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rd, _ = make_run(tmp_path, lines=0, states={"train": "PENDING", "export": "PENDING", "convert": "RUNNING"},
                     live_pid=os.getpid())
    out = _status(capsys, str(rd))
    assert "step" not in out.split("train", 1)[1].split("export")[0]
    d = json.loads(_status(capsys, str(rd), "--json"))
    assert d["train"]["step"] is None and d["train"]["eta_s"] is None


def test_watch_refreshes_until_every_stage_has_ended(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rd, manifest = make_run(tmp_path, lines=ATTEMPT1_LINES, states={"train": "RUNNING", "export": "PENDING"},
                            live_pid=os.getpid())

    def finish() -> None:  # what the local launcher does when the stages end: rewrite the manifest
        time.sleep(0.6)
        with open(rd / "logs" / "train_steps.jsonl", "a") as f:
            f.write("".join(step_lines()[ATTEMPT1_LINES:]))
        manifest["stages"]["train"]["state"] = "COMPLETED"
        manifest["stages"]["export"]["state"] = "COMPLETED"
        (rd / "manifest.json").write_text(json.dumps(manifest))

    t = threading.Thread(target=finish)
    t.start()
    out = _status(capsys, str(rd), "--watch", "0.1")
    t.join()
    assert out.count("run pipe (") >= 2  # refreshed at least once
    assert "step 15 of 40" in out and out.rstrip().endswith("COMPLETED")
    assert "step 40 of 40" in out


def test_status_imports_nothing_heavy(tmp_path: Path) -> None:
    rd, _ = make_run(tmp_path)
    code = ("import sys; from launcher.cli import main\nmain(['status', sys.argv[1]])\n"
            "print(sorted(m for m in ('torch', 'nemo', 'nemo_run', 'matplotlib', 'numpy') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code, str(rd)], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "[]"
    assert "step 40 of 40" in r.stdout


def test_stage_spans_use_recorded_times_and_infer_only_what_follows() -> None:
    from launcher.executors.slurm import _sacct_time
    from launcher.progress import StepLog, stage_spans

    m = {"created": 1000.0, "stages": {
        "convert": {"state": "COMPLETED", "submitted": 1000.0, "started": 1010.0, "ended": 1100.0},
        "tokenize": {"state": "COMPLETED"},  # an old manifest: no times, no log file
        "train": {"state": "RUNNING", "depends_on": ["convert", "tokenize"]},
        "export": {"state": "PENDING", "depends_on": ["train"]},
    }}
    spans = {s["name"]: s for s in stage_spans(m, StepLog())}
    assert (spans["convert"]["started"], spans["convert"]["ended"], spans["convert"]["inferred"]) == \
        (1010.0, 1100.0, False)
    assert spans["tokenize"]["started"] is None and spans["tokenize"]["ended"] is None
    assert spans["train"]["started"] == 1100.0 and spans["train"]["inferred"]  # afterok: not before convert ended
    assert spans["export"]["started"] is None and spans["export"]["submitted"] == 1000.0
    assert _sacct_time("Unknown") is None and _sacct_time("None") is None
    assert _sacct_time("2026-12-01T11:05:00") == time.mktime((2026, 12, 1, 11, 5, 0, 0, 0, -1))


def test_watch_json_prints_one_object_per_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rd, _ = make_run(tmp_path)
    lines = _status(capsys, str(rd), "--watch", "0.1", "--json").splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["train"]["step"] == 40
