"""launcher.report.tfevents reads TensorBoard scalars without TensorBoard; TensorBoard's own reader is the oracle
(and torch's SummaryWriter, which Lightning's TensorBoardLogger uses, the writer)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from launcher.report.tfevents import read_scalars, run_scalars

pytest.importorskip("tensorboard", reason="the oracle: TensorBoard's EventAccumulator")
SummaryWriter = pytest.importorskip("torch.utils.tensorboard").SummaryWriter


def _write(log_dir: Path, steps: range, offset: float = 0.0) -> None:
    w = SummaryWriter(str(log_dir))
    for s in steps:
        w.add_scalar("reduced_train_loss", 10.0 / (s + 1) + offset, s)
        w.add_scalar("lr", 2.5e-5 * s / 40, s)
        if s % 10 == 0:
            w.add_scalar("val_loss", 9.0 - s / 10, s)
    w.add_text("note", "not a scalar", 0)  # other event kinds are skipped
    w.close()


def test_scalars_equal_tensorboards_reader(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _write(tmp_path, range(1, 41))
    (f,) = tmp_path.glob("events.out.tfevents.*")
    ours = read_scalars(f)
    acc = EventAccumulator(str(f))
    acc.Reload()
    assert set(ours) == set(acc.Tags()["scalars"]) == {"reduced_train_loss", "lr", "val_loss"}
    for tag in ours:
        want = [(e.step, e.wall_time, e.value) for e in acc.Scalars(tag)]
        assert [(s, pytest.approx(w), pytest.approx(v)) for s, w, v in ours[tag]] == want


def test_a_file_cut_short_keeps_its_whole_records(tmp_path: Path) -> None:
    _write(tmp_path, range(1, 41))
    (f,) = tmp_path.glob("events.out.tfevents.*")
    data = f.read_bytes()
    f.write_bytes(data[: len(data) - 37])  # a kill mid-write
    got = read_scalars(f)
    assert 35 <= len(got["reduced_train_loss"]) <= 40


def test_report_of_a_run_without_step_log_draws_from_tensorboard(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from launcher.cli import main
    from tests.fixtures.gpu_run import make_run
    from tests.test_report import embedded_images

    rd, _ = make_run(tmp_path, lines=0)
    _write(rd / "train" / "tb_logs" / "pipe" / "run_0", range(1, 16), offset=1.0)  # attempt 1, moved by NeMo
    _write(rd / "train" / "tb_logs" / "pipe", range(11, 41))  # attempt 2
    scalars, files = run_scalars(rd / "train")
    assert len(files) == 2 and [s for s, _w, _v in scalars["reduced_train_loss"]][:15] == list(range(1, 16))
    assert main(["report", str(rd)]) == 0
    capsys.readouterr()
    page = (rd / "report.html").read_text()
    assert {"loss_step", "loss_tokens", "lr", "timeline"} <= set(embedded_images(page))
    assert "drawn from these events (no step log)" in page and "2 event file(s)" in page
    assert "reduced_train_loss 0.2439" in page  # 10/41, the resumed attempt's value of step 40
    assert not os.path.exists(rd / "logs" / "train_steps.jsonl")
    assert json.loads((rd / "manifest.json").read_text())["run"] == "pipe"
