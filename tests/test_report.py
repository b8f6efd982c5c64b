"""`cpt-launch report`: report.html and the PNGs from a copy of a real GPU run (benchmarks/train/results/d3/pipe),
finished, failed and not yet training; and the page opened in a real headless Chromium."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from launcher.cli import main
from tests.fixtures.gpu_run import REPO, make_run
from tests.fixtures.services import in_ci

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TRAIN_LOSS_RGB = (0x1F, 0x77, 0xB4)  # plots.loss_plot's train-loss line: drawn only inside the plots
VAL_LOSS_RGB = (0xFF, 0x7F, 0x0E)  # its first validation set (matplotlib's C1)
PLOTS = {"loss_step", "loss_tokens", "lr", "throughput", "memory", "timeline"}

EVALUATE = {
    "models": {
        "cpt": {"path": "/x/cpt", "ppl": {"ja": 9.5, "en": 14.0}, "japanese_reply_share": 0.8,
                "replies": [{"prompt": "日本の首都は?", "reply": "東京です。<script>alert(1)</script>", "japanese": True},
                            {"prompt": "Say hi & bye", "reply": "こんにちは", "japanese": True}]},
        "base": {"path": "/x/base", "ppl": {"ja": 12.0, "en": 13.5}, "japanese_reply_share": 0.25,
                 "replies": [{"prompt": "日本の首都は?", "reply": "Tokyo <b>is</b> the capital", "japanese": False}]},
    },
    "ppl": {"ja": {"cpt": 9.5, "base": 12.0}},
    "japanese_reply_share": {"cpt": 0.8, "base": 0.25},
    "settings": {"max_new_tokens": 64},
}


def png_size(data: bytes) -> tuple[int, int]:
    """Width, height from the IHDR chunk; fails on anything that is not a PNG."""
    assert data[:8] == PNG_MAGIC and data[12:16] == b"IHDR", data[:16]
    w, h = struct.unpack(">II", data[16:24])
    return w, h


def embedded_images(page: str) -> dict[str, bytes]:
    imgs = re.findall(r'<img id="plot-([a-z_]+)"[^>]*src="([^"]+)"', page)
    out = {}
    for name, src in imgs:
        assert src.startswith("data:image/png;base64,"), src[:60]
        out[name] = base64.b64decode(src.split(",", 1)[1], validate=True)
    return out


def _report(rd: Path, capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["report", str(rd)]) == 0
    assert capsys.readouterr().out.strip() == str(rd / "report.html")
    return (rd / "report.html").read_text()


def test_report_of_a_finished_run_has_every_plot_embedded_and_as_png(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    rd, _ = make_run(tmp_path, checkpoints=("pipe--step=39-consumed_samples=320.0",))
    (rd / "eval").mkdir()
    (rd / "eval" / "evaluate.json").write_text(json.dumps(EVALUATE, ensure_ascii=False))
    page = _report(rd, capsys)
    imgs = embedded_images(page)
    assert set(imgs) == PLOTS
    for name, data in imgs.items():
        w, h = png_size(data)
        assert w >= 600 and h >= 250, (name, w, h)
        assert (rd / "report" / f"{name}.png").read_bytes() == data  # the same plot as a file
    assert "src=\"http" not in page and "<link" not in page  # self-contained
    # the plan summary, the memory prediction and the MFU peak come from plan.json
    assert "TP1 PP1 CP1 DP1, MBS 1, GBS 8" in page and "predicted peak" in page and "989 TFLOP/s" in page
    # the evaluation: per-set perplexity base vs CPT, reply shares, replies side by side -- escaped
    assert re.search(r"<td>ja</td><td>12\.000</td><td>9\.500</td><td>-20\.8%</td>", page)
    assert re.search(r"<td>en</td><td>13\.500</td><td>14\.000</td><td>\+3\.7%</td>", page)
    assert "<td>Japanese reply share</td><td>25%</td><td>80%</td>" in page
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "Tokyo &lt;b&gt;is&lt;/b&gt; the capital" in page and "Say hi &amp; bye" in page
    assert "東京です。" in page
    assert "TensorBoard" in page and str(rd / "train") in page and "not used (no --wandb-project)" in page


def test_report_before_training_has_the_stage_timeline_only(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    rd, _ = make_run(tmp_path, lines=0, states={"convert": "RUNNING", "tokenize": "PENDING", "train": "PENDING",
                                                "export": "PENDING"}, live_pid=os.getpid())
    page = _report(rd, capsys)
    assert set(embedded_images(page)) == {"timeline"}
    assert page.count("No train steps logged yet.") == 5
    assert "No eval/evaluate.json yet" in page
    assert sorted(p.name for p in (rd / "report").iterdir()) == ["timeline.png"]


def test_report_of_a_failed_run_shows_the_reason_and_what_ran(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    rd, _ = make_run(tmp_path, lines=16, states={"train": "FAILED", "export": "CANCELLED"},
                     reasons={"train": "disk full while writing a checkpoint (torch: 'unexpected pos')"})
    page = _report(rd, capsys)
    assert set(embedded_images(page)) == PLOTS
    assert "train: FAILED: disk full while writing a checkpoint (torch: &#x27;unexpected pos&#x27;)" in page
    assert "step 15 of 40" in page


def test_report_without_plan_json_falls_back_to_the_jobspec(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    rd, _ = make_run(tmp_path, with_plan=False)
    page = _report(rd, capsys)
    assert "From jobspec.json (no plan.json)." in page
    assert "MFU n/a" in page  # no plan, no peak: not a guessed figure
    assert set(embedded_images(page)) == PLOTS


def test_report_names_the_offline_wandb_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rd, manifest = make_run(tmp_path, plan_extra={"wandb_project": "cpt-ja"})
    offline = rd / "train" / "wandb" / "wandb" / "offline-run-20261201_110000-abc123"
    offline.mkdir(parents=True)
    manifest["stages"]["train"]["outputs"]["wandb"] = str(rd / "train" / "wandb")
    (rd / "manifest.json").write_text(json.dumps(manifest))
    page = _report(rd, capsys)
    assert "project cpt-ja, offline (the cluster has no internet)" in page
    assert "offline-run-20261201_110000-abc123" in page and "wandb sync" in page


# ---- the page in a real browser ------------------------------------------------------------------------------

def _chromium() -> str:
    """Chromium from Debian's packages. CI installs it (.ci/run): missing there, or with CPT_REQUIRE_BROWSER=1,
    the test fails; on a developer's machine without it, it skips with the reason."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    msg = "chromium not found on PATH (install: apt-get install -y --no-install-recommends chromium)"
    if in_ci() or os.environ.get("CPT_REQUIRE_BROWSER"):
        pytest.fail(f"{msg}; CI must install it (.ci/run)", pytrace=False)
    pytest.skip(msg)


def _headless(chromium: str, tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # root needs --no-sandbox; a profile directory of its own keeps parallel runs apart
    return subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           f"--user-data-dir={tmp / 'profile'}", *args], capture_output=True, text=True,
                          timeout=120)


@pytest.mark.browser
def test_report_renders_in_headless_chromium(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import matplotlib.image

    chromium = _chromium()
    rd, _ = make_run(tmp_path, checkpoints=("pipe--step=39-consumed_samples=320.0",))
    (rd / "eval").mkdir()
    (rd / "eval" / "evaluate.json").write_text(json.dumps(EVALUATE, ensure_ascii=False))
    page = _report(rd, capsys)
    shot = tmp_path / "shot.png"
    r = _headless(chromium, tmp_path, "--window-size=1200,2200", f"--screenshot={shot}", (rd / "report.html").as_uri())
    assert shot.is_file(), r.stderr[-2000:]
    px = (matplotlib.image.imread(str(shot))[:, :, :3] * 255).round().astype(int)
    assert (px.reshape(-1, 3) != 255).any(axis=1).mean() > 0.05, "a blank page"
    # the plots' line colours: a page whose images fail to decode has none of them (measured: 0), only text
    for rgb, what in ((TRAIN_LOSS_RGB, "train loss"), (VAL_LOSS_RGB, "validation loss")):
        n = (abs(px - rgb).max(axis=2) <= 12).sum()
        assert n > 500, f"{n} pixels of the {what} line: the loss plot did not render"
    # every image decoded in the browser (a copy of the page that reports each image's natural size)
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", '<script>document.body.setAttribute("data-imgs", [...document.images]'
                                             '.map(i => i.complete + ":" + i.naturalWidth).join(","))</script></body>'))
    dom = _headless(chromium, tmp_path, "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()).stdout
    m = re.search(r'data-imgs="([^"]*)"', dom)
    assert m, dom[-2000:]
    sizes = m.group(1).split(",")
    assert len(sizes) == len(PLOTS) and all(s.startswith("true:") and int(s[5:]) >= 600 for s in sizes), sizes


def test_report_needs_only_matplotlib(tmp_path: Path) -> None:
    rd, _ = make_run(tmp_path)
    code = ("import sys; from launcher.cli import main\nmain(['report', sys.argv[1]])\n"
            "print(sorted(m for m in ('torch', 'nemo', 'nemo_run', 'tensorboard', 'wandb') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code, str(rd)], capture_output=True, text=True, cwd=REPO,
                       env={**os.environ, "MPLBACKEND": "", "DISPLAY": ""})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "[]"


def test_offloaded_run_plots_host_memory_and_named_sets_are_shown(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    rd, _ = make_run(tmp_path, plan_extra={"optimizer_offload": "on"})
    plan = json.loads((rd / "plan.json").read_text())
    assert plan["train"]["optimizer_offload"] and plan["memory"]["host_gib"] > 0
    with open(rd / "logs" / "train_steps.jsonl", "a") as f:
        for name, loss in (("ja", 9.1), ("en", 10.2)):
            f.write(json.dumps({"kind": "val", "attempt": 2, "step": 40, "val_loss": loss, "set": name}) + "\n")
    assert main(["report", str(rd), "--json"]) == 0
    written = json.loads(capsys.readouterr().out)
    assert set(written) == PLOTS | {"html"} and written["html"] == str(rd / "report.html")
    page = (rd / "report.html").read_text()
    assert "val loss en 10.2000, ja 9.1000, valid 9.6348 (step 40)" in page
    w, h = png_size(embedded_images(page)["memory"])
    assert h == 600  # two panels: GPU, and host memory against the plan's host need
