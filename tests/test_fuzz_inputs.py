"""Generated bad and hostile input, hundreds of cases: profiles, CLI values, manifests, tokenize inputs.

Each case must end in exit 0 or a clean exit 2 (never a traceback, never a hang), and whatever is rendered must be
valid bash in which no injected command runs: every stage script, sbatch script and submit_all.sh of an accepted
plan is checked with ``bash -n`` and then run with the job's programs (python3, srun, ...) replaced by no-ops,
and a canary file that each payload would create must not appear. The cases are generated from a fixed seed, so
a failure names a case that can be rerun alone (``-k``).
"""

from __future__ import annotations

import copy
import gzip
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from launcher.cli import main

REPO = Path(__file__).resolve().parent.parent
CANARY = "/tmp/cpt-fuzz-canary"
# each creates the canary if a shell ever evaluates it
PAYLOADS = [f"$(touch {CANARY})", f"`touch {CANARY}`", f";touch {CANARY};", f"'; touch {CANARY}; '",
            f'"; touch {CANARY}; "', f"|touch {CANARY}", f"&& touch {CANARY}", f"${{IFS}}touch${{IFS}}{CANARY}",
            f"$'\\x3b'touch {CANARY}", f"{{{{ touch {CANARY} }}}}", f"{{% raw %}}$(touch {CANARY})"]
ODD = ["", " ", "a b", "-x", "--help", "#", "%j", "*", "~", "..", "/", "ja=", "0.5:", "é日本", "x" * 5000,
       "${HOME}", "\\", "'", '"', "a,b", "a:b", "\x00"]
STUB_BIN = ("python3", "python", "torchrun", "srun", "sbatch", "scontrol", "scancel", "squeue", "nvidia-smi",
            "hostname", "sleep", "docker", "enroot")


@pytest.fixture(scope="module")
def stubs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("stubs")
    for name in STUB_BIN:
        (d / name).write_text("#!/bin/sh\nexit 0\n")
        (d / name).chmod(0o755)
    return d


def _scripts(out: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for s in out.get("stages", []):
        if s.get("script"):
            yield s["name"], s["script"]
    yield from out.get("submission", {}).items()


def _assert_safe(scripts: list[tuple[str, str]], stubs: Path, tmp: Path, case: str) -> None:
    for name, text in scripts:
        f = tmp / "script.sh"
        f.write_text(text)
        r = subprocess.run(["bash", "-n", str(f)], capture_output=True, text=True)
        assert r.returncode == 0, f"{case}: {name} is not valid bash: {r.stderr}"
        # run it with the job's programs as no-ops; cd and exec neutralised so every line is reached
        wrapper = 'cd() { :; }; exec() { "$@"; }; set +e; source "$1"'
        subprocess.run(["bash", "-c", wrapper, "_", str(f)], capture_output=True, timeout=20, cwd=tmp,
                       env={"PATH": f"{stubs}:/usr/bin:/bin", "HOME": str(tmp), "SLURM_JOB_NODELIST": "n1",
                            "SLURM_NNODES": "1", "SLURM_JOB_ID": "1", "SLURM_PROCID": "0", "SLURM_LOCALID": "0",
                            "SLURM_NODEID": "0"})
        assert not os.path.exists(CANARY), f"{case}: {name} ran an injected command"


def _run_cli(argv: list[str], capsys: pytest.CaptureFixture[str], case: str) -> tuple[int, str, str]:
    t0 = time.monotonic()
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse's own usage errors
        rc = int(e.code or 0)
    out, err = capsys.readouterr()
    assert time.monotonic() - t0 < 10, f"{case}: took {time.monotonic() - t0:.1f} s"
    assert rc in (0, 2), f"{case}: exit {rc}\n{err[-2000:]}"
    assert "Traceback" not in err, f"{case}: {err[-2000:]}"
    if rc == 2:  # why: on stderr, or with --json in its problems
        said = err.strip() or (out.strip() and [p for p in json.loads(out)["problems"] if p["severity"] == "error"])
        assert said, f"{case}: exit 2 without saying why"
    return rc, out, err


@pytest.fixture(autouse=True)
def _no_canary() -> Iterator[None]:
    if os.path.exists(CANARY):
        os.remove(CANARY)
    yield
    assert not os.path.exists(CANARY), "an injected command ran"


# ---- profiles ------------------------------------------------------------------------------------------------

BASE = yaml.safe_load((REPO / "clusters" / "dgx-h100.yaml").read_text())


def _leaves(d: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Any]]:
    if isinstance(d, dict):
        for k, v in d.items():
            yield from _leaves(v, path + (k,))
    elif isinstance(d, list):
        for i, v in enumerate(d):
            yield from _leaves(v, path + (i,))
    else:
        yield path, d


def _with(path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    d = copy.deepcopy(BASE)
    node: Any = d
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    return d


def _profile_cases() -> list[tuple[str, str]]:
    """(id, YAML text): every leaf set to hostile and odd values, then raw-text breakage."""
    rnd = random.Random(12)
    cases: list[tuple[str, str]] = []
    leaves = list(_leaves(BASE))
    for path, old in leaves:
        key = ".".join(map(str, path))
        values: list[Any] = PAYLOADS[:3] + rnd.sample(ODD, 3)
        if isinstance(old, (int, float)) and not isinstance(old, bool):
            values += [0, -1, 1e30, float("nan"), float("inf"), 10**20, "abc", True, [], {}]
        for i, v in enumerate(values):
            cases.append((f"{key}#{i}", yaml.safe_dump(_with(path, v), allow_unicode=True)))
    env_keys = ["A B", "1X", "X;touch " + CANARY, "PATH", "LD_PRELOAD", "X$(id)", ""]
    for i, k in enumerate(env_keys):
        cases.append((f"env-key#{i}", yaml.safe_dump(_with(("defaults", "env"), {k: "1"}))))
    text = (REPO / "clusters" / "dgx-h100.yaml").read_text()
    raw = {
        "non-utf8": text.replace("DGX H100 (8x", "DGX \udcff H100 (8x"),
        "deep-nesting": "name: " + "[" * 5000 + "]" * 5000 + "\n",
        "python-tag": text.replace("name: dgx-h100", "name: !!python/name:os.system"),
        "custom-tag": text.replace("name: dgx-h100", "name: !foo dgx-h100"),
        "bad-int": text.replace("gpus_per_node: 8", "gpus_per_node: !!int abc"),
        "dup-key": text.replace("  account: cpt\n", "  account: cpt\n  account: other\n"),
        "sexagesimal": text.replace('time: "04:00:00"', "time: 4:00:00"),
        "nan-mem": text.replace("host_memory_gib: 2000", "host_memory_gib: .nan"),
        "huge-description": text.replace("description: DGX", "description: " + "x" * (16 << 20) + " DGX"),
        "anchor-bomb": "a: &a [x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b]\n"
                       "d: &d [*c,*c,*c,*c,*c,*c,*c,*c]\ne: [*d,*d,*d,*d,*d,*d,*d,*d]\n" + text,
        "empty": "",
        "list": "- a\n- b\n",
        "null-byte": text.replace("account: cpt", "account: c\x00pt"),
        "tab-indent": text.replace("  account", "\taccount"),
    }
    cases += list(raw.items())
    return cases


PROFILE_CASES = _profile_cases()


def _write_profile(tmp: Path, text: str) -> Path:
    f = tmp / "fuzz.yaml"
    data = text.encode("utf-8", "surrogateescape")
    f.write_bytes(data)
    return f


# what these must be refused for (the rest may also be accepted, when what they render is safe)
REFUSED = {"non-utf8": "is not UTF-8", "deep-nesting": "nested too deeply", "python-tag": "tag", "custom-tag": "tag",
           "bad-int": "expected an integer", "dup-key": "given twice", "nan-mem": "finite", "null-byte":
           "control character", "huge-description": "over 1 MiB", "empty": "mapping", "list": "mapping",
           **{f"env-key#{i}": "not an environment variable name" for i in (0, 1, 2, 5, 6)}}


@pytest.mark.parametrize("case,text", PROFILE_CASES, ids=[c for c, _ in PROFILE_CASES])
def test_bad_profile_is_a_clean_error_or_a_safe_plan(case: str, text: str, tmp_path: Path, stubs: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    f = _write_profile(tmp_path, text)
    rc, out, err = _run_cli(["--cluster", str(f), "--run-name", "fuzz", "--dry-run", "--json", "--backend",
                             "sbatch"], capsys, case)
    if case in REFUSED:
        assert rc == 2 and REFUSED[case] in err and str(f) in err, f"{case}: {err[-1500:]}"
    if case.startswith(("slurm.account#", "slurm.partition#", "slurm.mem#")) and rc == 0:
        d = yaml.safe_load(text)["slurm"]
        assert all(v and " " not in str(v) for v in d.values() if isinstance(v, str)), case
    if rc == 0:
        _assert_safe(list(_scripts(json.loads(out))), stubs, tmp_path, case)


def test_an_unquoted_time_means_what_was_written(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = dict(PROFILE_CASES)["sexagesimal"]  # time: 4:00:00, which YAML 1.1 reads as 14400
    f = _write_profile(tmp_path, text)
    rc, out, err = _run_cli(["--cluster", str(f), "--run-name", "fuzz", "--dry-run", "--backend", "sbatch"],
                            capsys, "sexagesimal")
    assert rc == 0 and "#SBATCH --time=4:00:00" in out, err


def test_profile_encodings_and_boms(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = (REPO / "clusters" / "dgx-h100.yaml").read_text()
    for enc in ("utf-16", "utf-32", "latin-1"):
        f = tmp_path / f"{enc}.yaml"
        f.write_bytes(text.replace("DGX H100 (8x", "DGX H100 é (8x").encode(enc))
        _run_cli(["plan", "--cluster", str(f), "--json"], capsys, enc)


# ---- CLI values ----------------------------------------------------------------------------------------------

STRING_FLAGS = ["--data", "--valid-data", "--model-dir", "--container-image", "--run-name", "--model"]
INT_FLAGS = ["--nodes", "--max-steps", "--gbs", "--mbs", "--seq-length", "--num-layers", "--tp", "--pp", "--cp",
             "--ckpt-every", "--ckpt-keep", "--val-every"]


def _cli_cases() -> list[tuple[str, list[str]]]:
    cases: list[tuple[str, list[str]]] = []
    for flag in STRING_FLAGS:
        for i, v in enumerate(PAYLOADS + [o for o in ODD if o]):
            if "\x00" in v:
                continue  # argv cannot hold NUL: the OS refuses it before we see it
            cases.append((f"{flag}#{i}", [flag, v]))
    for flag in INT_FLAGS:
        for v in ("0", "-1", "1000000000", str(2**63), "1e30", "nan", "", "4 ", "٣"):
            cases.append((f"{flag}={v!r}", [f"{flag}={v}"]))
    return cases


CLI_CASES = _cli_cases()


@pytest.mark.parametrize("case,args", CLI_CASES, ids=[c for c, _ in CLI_CASES])
def test_bad_cli_value_is_a_clean_error_or_a_safe_plan(case: str, args: list[str], tmp_path: Path, stubs: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--cluster", "dgx-h100", "--dry-run", "--json", "--backend", "sbatch", *args]
    if "--run-name" not in args:
        argv += ["--run-name", "fuzz"]
    rc, out, _ = _run_cli(argv, capsys, case)
    if rc == 0:
        _assert_safe(list(_scripts(json.loads(out))), stubs, tmp_path, case)


# ---- tokenize inputs -----------------------------------------------------------------------------------------

GOOD = '{"text": "日本語の文です。"}\n{"text": "An English line."}\n'


def _jsonl_cases(d: Path) -> dict[str, list[str]]:
    """case -> extra tokenize arguments; files are made under d."""
    def put(name: str, data: bytes) -> str:
        (d / name).write_bytes(data)
        return str(d / name)

    good = put("good.jsonl", GOOD.encode())
    cases: dict[str, list[str]] = {
        "corrupt-gz": ["--input", put("bad.jsonl.gz", b"\x1f\x8b\x08\x00garbage" * 10)],
        "truncated-gz": ["--input", put("trunc.jsonl.gz", gzip.compress(GOOD.encode() * 50)[:-20])],
        "blank-gz": ["--input", put("blank.jsonl.gz", gzip.compress(b"\n" * (16 << 20)))],
        "non-utf8-line": ["--input", put("latin.jsonl", GOOD.encode() + b'{"text": "caf\xe9"}\n')],
        "deep-json": ["--input", put("deep.jsonl", b"[" * 200000 + b"]" * 200000 + b"\n" + GOOD.encode())],
        "not-objects": ["--input", put("list.jsonl", b'[1, 2]\n"str"\nnull\n{"text": 5}\n{"text": null}\n')],
        "nul-text": ["--input", put("nul.jsonl", b'{"text": "a\\u0000b"}\n' + GOOD.encode())],
        "no-match": ["--input", str(d / "nothing_*.jsonl")],
        "directory-input": ["--input", str(d / "emptydir")],
        "output-under-a-file": ["--input", good, "--output", str(d / "good.jsonl" / "out")],
        "output-too-long": ["--input", good, "--output", str(d / ("x" * 300))],
        "seq-length-0": ["--input", good, "--seq-length", "0"],
        "gbs-negative": ["--input", good, "--global-batch-size", "-1"],
        "workers-0": ["--input", good, "--workers", "0"],
        "weight-negative": ["--input", good, "--blend", str(d / "blend.json"), "--weight", "-1"],
        "weight-nan": ["--input", good, "--blend", str(d / "blend.json"), "--weight", "nan"],
    }
    (d / "emptydir").mkdir(exist_ok=True)
    return cases


def _tree(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


JSONL_CASES = ["corrupt-gz", "truncated-gz", "blank-gz", "non-utf8-line", "deep-json", "not-objects", "nul-text",
               "no-match", "directory-input", "output-under-a-file", "output-too-long", "seq-length-0",
               "gbs-negative", "workers-0", "weight-negative", "weight-nan"]


@pytest.mark.parametrize("case", JSONL_CASES)
def test_bad_tokenize_input_is_clean_and_leaves_nothing_partial(case: str, tmp_path: Path, llama31_tokenizer_dir: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    cases = _jsonl_cases(inputs)
    assert sorted(cases) == sorted(JSONL_CASES)
    extra = cases[case]
    before = _tree(inputs)
    out = tmp_path / "out" / "ds"
    argv = ["tokenize", "--tokenizer", str(llama31_tokenizer_dir), "--output", str(out), "--workers", "2", *extra]
    if extra.count("--output") == 1:
        argv[argv.index("--output"):argv.index("--output") + 2] = []
    rc, _, err = _run_cli(argv, capsys, case)
    after = _tree(inputs)
    assert {k: v for k, v in after.items() if k in before} == before, f"{case}: an input changed"
    finished = [p for p in tmp_path.rglob("*_document.*") if p.suffix in (".bin", ".idx")]
    if rc == 2:
        assert not finished, f"{case}: a failed run left {finished}"
    else:
        assert {p.suffix for p in finished} == {".bin", ".idx"}, f"{case}: {finished}"


def test_tokenize_never_reads_its_own_outputs(tmp_path: Path, llama31_tokenizer_dir: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """An input that is one of the output's own files (its skipped-lines list, its stats) is refused, untouched."""
    d = tmp_path / "out"
    d.mkdir()
    base = ["tokenize", "--tokenizer", str(llama31_tokenizer_dir), "--output", str(d / "x"), "--workers", "1"]
    (d / "good.jsonl").write_text(GOOD + "not json\n")
    rc, _, err = _run_cli([*base, "--input", str(d / "good.jsonl")], capsys, "first")
    assert rc == 0, err
    own = [p for p in d.iterdir() if p.name.startswith("x") and p.suffix in (".jsonl", ".json")]
    assert own, list(d.iterdir())
    for f in own:
        data = f.read_bytes()
        rc, _, err = _run_cli([*base, "--input", str(f)], capsys, f.name)
        assert rc == 2 and "output" in err and f.name in err, err
        assert f.read_bytes() == data, f"{f} changed"


@pytest.mark.parametrize("what,content", [
    ("tokenizer.json", b"{not json"), ("tokenizer.json", b"[]"), ("tokenizer_config.json", b"{not json"),
    ("tokenizer_config.json", b'"a string"'), ("tokenizer_config.json", b'{"eos_token": 5}'),
    ("tokenizer.json", b"\xff\xfe\x00"),
])
def test_a_broken_tokenizer_is_a_clean_error(what: str, content: bytes, tmp_path: Path, llama31_tokenizer_dir: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    tok = tmp_path / "tok"
    tok.mkdir()
    for f in llama31_tokenizer_dir.iterdir():
        if f.is_file():
            (tok / f.name).write_bytes(f.read_bytes())
    (tok / what).write_bytes(content)
    (tmp_path / "in.jsonl").write_text(GOOD)
    rc, _, err = _run_cli(["tokenize", "--tokenizer", str(tok), "--input", str(tmp_path / "in.jsonl"), "--output",
                           str(tmp_path / "o" / "x"), "--workers", "1"], capsys, f"{what}={content!r}")
    assert rc == 2 and what in err, err
    assert not list(tmp_path.rglob("*.bin"))


# ---- prepared prefixes: check reads their .idx -----------------------------------------------------------------

@pytest.mark.parametrize("case", ["idx-is-a-directory", "bin-is-a-directory", "idx-random-bytes", "idx-truncated",
                                  "idx-empty", "bin-missing", "idx-huge-counts"])
def test_a_broken_prefix_is_a_clean_error_at_check(case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                                   ) -> None:
    import struct

    p = tmp_path / "d" / "x_text_document"
    p.parent.mkdir()
    good_header = b"MMIDIDX\x00\x00" + struct.pack("<QBQQ", 1, 4, 1, 2)
    files = {"idx-is-a-directory": (None, b"\0" * 8), "bin-is-a-directory": (good_header, None),
             "idx-random-bytes": (os.urandom(64), b"\0" * 8), "idx-truncated": (good_header[:12], b"\0" * 8),
             "idx-empty": (b"", b""), "bin-missing": (good_header, "missing"),
             "idx-huge-counts": (b"MMIDIDX\x00\x00" + struct.pack("<QBQQ", 1, 4, 2**60, 2**60), b"")}[case]
    for suffix, content in zip((".idx", ".bin"), files):
        f = Path(f"{p}{suffix}")
        if content is None:
            f.mkdir()
        elif content != "missing":
            f.write_bytes(content)
    profile = (REPO / "benchmarks" / "train" / "h200-device.yaml").read_text().replace("/tmp/cpt", str(tmp_path))
    prof = tmp_path / "p.yaml"
    prof.write_text(profile)
    rc, _, err = _run_cli(["check", "--cluster", str(prof), "--model", "llama3.2-1b", "--num-layers", "2", "--data",
                           str(p), "--valid-data", str(p)], capsys, case)
    assert rc == 2 and str(p) in err, err
