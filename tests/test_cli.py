"""The command line as a user runs it: dry run text and JSON, exit codes, the download stage."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from launcher.cli import main

REPO = Path(__file__).resolve().parent.parent


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "launcher.cli", *args], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, **(env or {})})


def test_dry_run_prints_summary_then_every_script() -> None:
    r = run("--cluster", "dgx-h100", "--nodes", "4", "--dry-run", "--run-name", "demo")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert out.startswith("cpt-launch 0.1.0 plan: run demo on dgx-h100 (slurm), 4 node(s) x 8 GPU = 32 GPU(s)")
    for stage in ("download", "convert", "tokenize", "train", "export", "evaluate"):
        assert f"# ===== stage {stage}: /lustre/cpt/runs/demo/scripts/{stage}.sh =====" in out
    assert out.count("set -euo pipefail") == 6


def test_json_has_the_documented_keys() -> None:
    r = run("--cluster", "dgx-h100", "--nodes", "4", "--dry-run", "--json", "--run-name", "demo",
            env={"HF_TOKEN": "hf_shouldNotAppear"})
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert {"run", "cluster", "nodes", "gpus", "parallelism", "stages", "problems", "memory"} <= set(d)
    assert (d["run"], d["cluster"], d["nodes"], d["gpus"]) == ("demo", "dgx-h100", 4, 32)
    p = d["parallelism"]
    assert p["tp"] * p["pp"] * p["cp"] * p["dp"] == 32 and p["gbs"] % (p["mbs"] * p["dp"]) == 0
    assert [s["name"] for s in d["stages"]] == ["download", "convert", "tokenize", "train", "export", "evaluate"]
    assert all({"name", "depends_on", "script"} <= set(s) for s in d["stages"])
    assert set(d["memory"]) >= {"predicted_peak_gib", "capacity_gib", "fits", "strategy"}
    assert "hf_shouldNotAppear" not in r.stdout + r.stderr


def test_dry_run_does_not_touch_the_filesystem(tmp_path: Path) -> None:
    prof = (REPO / "clusters" / "test-slurm.yaml").read_text().replace("/tmp/cpt-test", str(tmp_path / "x"))
    f = tmp_path / "p.yaml"
    f.write_text(prof)
    r = run("--cluster", str(f), "--dry-run")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.yaml"]


def test_nodes_rederive_in_the_dry_run() -> None:
    d1 = json.loads(run("plan", "--cluster", "dgx-h100", "--nodes", "1", "--json").stdout)
    d8 = json.loads(run("plan", "--cluster", "dgx-h100", "--nodes", "8", "--json").stdout)
    assert d1["gpus"] == 8 and d8["gpus"] == 64
    for d in (d1, d8):
        p = d["parallelism"]
        assert p["tp"] * p["pp"] * p["cp"] * p["dp"] == d["gpus"]


def test_pinned_knob_that_cannot_work_exits_2_naming_it() -> None:
    r = run("plan", "--cluster", "dgx-h100", "--nodes", "4", "--tp", "3")
    assert r.returncode == 2 and r.stdout == ""
    assert "--tp" in r.stderr and "tp=3" in r.stderr and "nearest that works" in r.stderr


def test_usage_errors_exit_2() -> None:
    assert main([]) == 2
    with pytest.raises(SystemExit) as e:
        main(["--cluster", "dgx-h100", "--nodes", "four"])
    assert e.value.code == 2


def test_check_reports_missing_data_through_the_mounts(tmp_path: Path) -> None:
    prof = (REPO / "clusters" / "test-slurm.yaml").read_text().replace("/tmp/cpt-test", str(tmp_path))
    f = tmp_path / "p.yaml"
    f.write_text(prof)
    r = run("check", "--cluster", str(f), "--data", str(tmp_path / "data" / "nope_text_document"),
            env={"HF_HUB_OFFLINE": "1"})
    assert r.returncode == 2
    assert f"{tmp_path}/data/nope_text_document.bin" in r.stderr and r.stdout.endswith("warning(s)\n")


def test_status_of_an_unknown_run_names_what_it_looked_for() -> None:
    r = run("status", "/nonexistent/run")
    assert r.returncode == 2 and "no manifest.json in /nonexistent/run" in r.stderr


def test_help_does_not_import_heavy_modules() -> None:
    code = ("import sys; from launcher.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'nemo', 'nemo_run', 'numpy') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert r.stdout.strip().splitlines()[-1] == "[]"


# ---- the download stage ------------------------------------------------------------------------------------


def test_download_skips_a_complete_model_dir(tmp_path: Path) -> None:
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (tmp_path / name).write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(struct.pack("<Q", 2) + b"{}")
    r = subprocess.run([sys.executable, "-m", "launcher.stages.download", "--repo", "meta-llama/Llama-3.1-8B",
                        "--dest", str(tmp_path)], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0 and "already holds a complete model" in r.stderr


def test_download_offline_without_cache_explains(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "launcher.stages.download", "--repo", "meta-llama/Llama-3.1-8B",
                        "--dest", str(tmp_path / "m")], capture_output=True, text=True, cwd=REPO,
                       env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")})
    assert r.returncode == 2, r.stderr
    assert "HF_HUB_OFFLINE=1 and the model is not in the cache" in r.stderr and "Traceback" not in r.stderr


def test_logs_of_a_failed_submitit_job_show_the_other_tasks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """srun kills the other tasks once one exits non-zero: task 0's log may hold only 'Terminated' (seen in CI),
    so the logs of a failed job end with every other task's tail; a completed job prints task 0 alone."""
    from launcher.cli import _print_other_tasks

    t0 = tmp_path / "29_0_log.out"
    t0.write_text("submitit INFO - Starting\nslurmstepd: error: *** STEP 29.0 CANCELLED ***\nsrun: error: node1: Terminated\n")
    (tmp_path / "29_1_log.out").write_text("RuntimeError: configuration error (exit 2): not requeued\n")
    (tmp_path / "30_1_log.out").write_text("another job\n")
    _print_other_tasks(t0, "FAILED")
    out = capsys.readouterr().out
    assert "--- task 1 (" in out and "configuration error (exit 2)" in out
    assert "another job" not in out and "STEP 29.0" not in out
    _print_other_tasks(t0, "COMPLETED")
    assert capsys.readouterr().out == ""


def test_tokenize_without_the_data_extra_says_which_extra(tmp_path: Path) -> None:
    """`cpt-launch tokenize` in an environment with only the launcher (no numpy): exit 2 naming the extra, no
    traceback. A bare virtualenv that sees this checkout but none of the data packages."""
    bare = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}
    r = subprocess.run([str(bare / "bin" / "python3"), "-c",
                        "import sys; from launcher.cli import main; "
                        "sys.exit(main(['tokenize', '--input', 'x.jsonl', '--tokenizer', 't', '--output', 'o']))"],
                       capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    assert "tokenize: error: needs the data extra (No module named 'numpy')" in r.stderr
    assert "pip install -e '.[data]'" in r.stderr


def test_a_control_character_in_any_argument_is_refused_and_nothing_is_rendered(tmp_path: Path) -> None:
    from launcher.cli import main

    marker = tmp_path / "PWNED"
    for argv in (["plan", "--cluster", "dgx-h100", f"--data=/tmp/x\ntouch {marker} #.jsonl"],
                 ["plan", "--cluster", "dgx-h100", "--run-name", "a\rb"],
                 ["--cluster", "dgx-h100", "--dry-run", "--container-image", "img\x1b[2J"]):
        assert main(argv) == 2
    assert not marker.exists()


def test_the_made_by_comment_stays_one_line() -> None:
    from launcher.plan import Overrides, PlanContext, build_plan
    from launcher.profiles import load_profile

    ctx = PlanContext(code_dir="/src", command="cpt-launch --data=/x\ntouch /tmp/PWNED #", run_name="r")
    for stage in build_plan(load_profile("dgx-h100"), Overrides(), ctx).stages:
        made_by = [ln for ln in stage.script.splitlines() if ln.startswith("# Made by:")]
        assert made_by == ["# Made by: cpt-launch --data=/x touch /tmp/PWNED #"]
        assert not any(ln.startswith("touch") for ln in stage.script.splitlines())


def test_mistyped_commands_and_options_get_the_nearest_one(capsys: pytest.CaptureFixture[str]) -> None:
    cases = {("statsu", "RUN"): "unknown command 'statsu'; did you mean 'status'?",
             ("--clster", "dgx-h100"): "unknown option --clster for 'submit'; did you mean --cluster?",
             ("--cluster", "dgx-h100", "--nodse", "4"): "did you mean --nodes?",
             # no abbreviations: --node is not silently --nodes
             ("--cluster", "dgx-h100", "--node", "4", "--dry-run"): "unknown option --node for 'submit'",
             ("plan", "--cluster", "dgx-h100", "--gbs=8", "--max-step=3"): "did you mean --max-steps?"}
    for argv, said in cases.items():
        assert main(list(argv)) == 2, argv
        err = capsys.readouterr().err
        assert said in err, (argv, err)


def test_help_shows_the_submit_options() -> None:
    r = run("--help")
    assert r.returncode == 0
    for opt in ("--cluster", "--nodes", "--dry-run", "--resume", "--backend", "--emit-sbatch", "--ckpt-every"):
        assert opt in r.stdout, opt
    assert "status" in r.stdout and "tokenize" in r.stdout


def _manifest_dir(tmp_path: Path, text: str) -> Path:
    d = tmp_path / "run"
    d.mkdir(exist_ok=True)
    (d / "manifest.json").write_text(text)
    return d


@pytest.mark.parametrize("text,said", [
    ("{not json", "not a readable JSON manifest"),
    ("[1, 2]", "the manifest is a JSON list"),
    ('{"run": "r"}', "cluster: missing"),
    ('{"run": "r", "cluster": "c", "backend": "b", "run_dir": "/x", "created": 1, "stages": {}, "extra": 1}',
     "unknown keys ['extra']"),
    ('{"run": "r", "cluster": "c", "backend": "b", "run_dir": "/x", "created": 1, "stages": {"t": {"nme": 1}}}',
     "stages.t: unknown keys ['nme']"),
    ("\xff\xfe", "not a readable JSON manifest"),
])
def test_a_broken_manifest_is_a_clean_error_naming_the_file(tmp_path: Path, text: str, said: str) -> None:
    d = _manifest_dir(tmp_path, text)
    for cmd in ("status", "logs", "cancel"):
        r = run(cmd, str(d))
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert f"{d}/manifest.json" in r.stderr and said in r.stderr, r.stderr


def test_status_finds_a_run_by_name_wherever_its_profile_put_it(tmp_path: Path) -> None:
    prof = (REPO / "clusters" / "workstation-48gb.yaml").read_text()
    prof = prof.replace("/data/cpt", str(tmp_path / "area"))
    f = tmp_path / "mine.yaml"
    f.write_text(prof)
    from launcher.manifest import write_run_dir
    from launcher.plan import Overrides, PlanContext, build_plan
    from launcher.profiles import load_profile

    plan = build_plan(load_profile(str(f)), Overrides(num_layers=2, data=("x_text_document",),
                                                      valid_data=("y_text_document",)),
                      PlanContext(code_dir=str(REPO), command="t", run_name="found-by-name-" + tmp_path.name[-8:]))
    write_run_dir(plan, "nemo-run-local")
    r = run("status", plan.run, "--json")  # no --cluster: the profile is a file the CLI does not know
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["run_dir"] == plan.run_dir


def test_the_readme_names_every_submit_option() -> None:
    from launcher.cli import _subparsers, build_parser

    readme = (REPO / "README.md").read_text()
    options = [o for o in _subparsers(build_parser())["submit"]._option_string_actions
               if o.startswith("--") and o != "--help"]
    assert [o for o in options if f"`{o}" not in readme] == []
