"""Bad input is counted and reported with file:line, never silently lost; crashes leave no complete-looking pair."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from launcher.data import DataError, tokenize_jsonl
from tests.test_data_oracle import megatron_classic, read_lines, same_bytes

REPO = Path(__file__).resolve().parents[1]

BAD_LINES: list[tuple[bytes, str | None]] = [
    (b'{"text": "good one"}', None),
    (b'{"text": "abc"', "malformed-json"),
    (b'{"body": "no text field"}', "missing-key"),
    (b'{"text": "caf\xe9 latin-1"}', "non-utf8"),
    (b'{"text": ""}', "empty"),
    (b'{"text": "a\\ud800b lone surrogate"}', "lone-surrogate"),
    (b"", "blank-line"),
    (b'{"text": 5}', "not-a-string"),
    (b"[1, 2]", "not-an-object"),
    (b'{"text": "good two"}', None),
    (b'{"text": "python json accepts NaN", "score": NaN}', None),
    (b'{"text": "pair \\ud83d\\ude00 is an emoji"}', None),
    (b'{"text": "first", "text": "duplicate key: last wins"}', None),
    (b'{"text": "crlf line"}\r', None),
]


def _bad_file(path: Path) -> Path:
    path.write_bytes(b"\n".join(line for line, _ in BAD_LINES) + b"\n")
    return path


def test_bad_lines_skipped_and_reported(tmp_path, llama31_tokenizer_dir) -> None:
    src = _bad_file(tmp_path / "bad.jsonl")
    res = tokenize_jsonl([str(src)], str(llama31_tokenizer_dir), str(tmp_path / "o"), workers=2)
    expected = {n + 1: reason for n, (_, reason) in enumerate(BAD_LINES) if reason}
    st = res.stats["text"]
    got = {ex["line"]: ex["reason"] for ex in st["skipped"]["examples"]}
    assert got == expected
    assert all(ex["file"] == str(src) for ex in st["skipped"]["examples"])
    assert res.skipped == len(expected) and sum(res.skipped_by_reason.values()) == len(expected)
    # every skipped line is in {output}.skipped.jsonl, with file, line, reason and detail
    listed = [json.loads(ln) for ln in (tmp_path / "o.skipped.jsonl").read_text().splitlines()]
    assert [(x["line"], x["reason"]) for x in listed] == sorted(expected.items())
    assert "0xe9" in listed[2]["detail"] and "U+D800" in listed[4]["detail"]
    # the kept documents are exactly Megatron's for the good lines
    good = [line.decode() + "\n" for line, reason in BAD_LINES if reason is None]
    ref = megatron_classic(good, llama31_tokenizer_dir, str(tmp_path / "ref"))
    assert same_bytes(res.outputs["text"], ref)
    assert res.documents == len(good)


def test_strict_stops_with_file_and_line(tmp_path, llama31_tokenizer_dir) -> None:
    src = _bad_file(tmp_path / "bad.jsonl")
    with pytest.raises(DataError, match=rf"{src}:2: malformed-json"):
        tokenize_jsonl([str(src)], str(llama31_tokenizer_dir), str(tmp_path / "o"), workers=1, strict=True)
    assert not (tmp_path / "o_text_document.idx").exists()
    assert not (tmp_path / "o_text_document.bin").exists()
    proc = subprocess.run(
        [sys.executable, "-m", "launcher.data.cli", "-i", str(src), "-t", str(llama31_tokenizer_dir),
         "-o", str(tmp_path / "c"), "--strict", "-j", "1", "-q"],
        cwd=REPO, capture_output=True, text=True,
    )
    assert proc.returncode == 2
    assert f"{src}:2: malformed-json" in proc.stderr
    assert not (tmp_path / "c_text_document.idx").exists()


def test_corrupt_shard_then_resume_redoes_only_unfinished(tmp_path, llama31_tokenizer_dir, japanese_jsonl) -> None:
    lines = read_lines(japanese_jsonl)
    d = tmp_path / "in"
    d.mkdir()
    chunks = [lines[:800], lines[800:1600], lines[1600:]]
    for n, chunk in enumerate(chunks[:2]):
        with gzip.open(d / f"train_{n}.jsonl.gz", "wt", encoding="utf-8") as f:
            f.write("".join(chunk))
    good_gz = gzip.compress("".join(chunks[2]).encode())
    (d / "train_2.jsonl.gz").write_bytes(good_gz[: len(good_gz) // 2])  # truncated download
    out = tmp_path / "ds" / "train"
    with pytest.raises(DataError, match=r"train_2\.jsonl\.gz"):
        tokenize_jsonl([str(d / "train_*.jsonl.gz")], str(llama31_tokenizer_dir), str(out), workers=2)
    # nothing that looks complete
    assert not Path(f"{out}_text_document.idx").exists() and not Path(f"{out}_text_document.bin").exists()
    work = Path(f"{out}.tokenize-work")
    assert (work / "00000.done.json").exists() and (work / "00001.done.json").exists()
    assert not (work / "00002.done.json").exists()
    (d / "train_2.jsonl.gz").write_bytes(good_gz)  # fixed
    res = tokenize_jsonl([str(d / "train_*.jsonl.gz")], str(llama31_tokenizer_dir), str(out), workers=2)
    assert (res.shards_total, res.shards_reused) == (3, 2)
    ref = megatron_classic(lines, llama31_tokenizer_dir, str(tmp_path / "ref"))
    assert same_bytes(res.outputs["text"], ref)
    assert not work.exists()


def _many_shards(tmp_path: Path, japanese_jsonl: Path, n: int) -> tuple[Path, list[str]]:
    d = tmp_path / "many"
    d.mkdir()
    lines = read_lines(japanese_jsonl)
    all_lines: list[str] = []
    for k in range(n):
        part = [json.dumps({"text": f"[{k}] " + json.loads(ln)["text"]}, ensure_ascii=False) + "\n" for ln in lines]
        (d / f"s_{k:02d}.jsonl").write_text("".join(part), encoding="utf-8")
        all_lines += part
    return d, all_lines


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_killed_run_leaves_no_complete_pair_and_resumes(tmp_path, llama31_tokenizer_dir, japanese_jsonl, sig) -> None:
    d, all_lines = _many_shards(tmp_path, japanese_jsonl, 12)
    out = tmp_path / "o"
    cmd = [sys.executable, "-m", "launcher.data.cli", "-i", str(d), "-t", str(llama31_tokenizer_dir), "-o", str(out),
           "-j", "2" if sig == signal.SIGINT else "1", "-q"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    marker = Path(f"{out}.tokenize-work") / "00001.done.json"
    deadline = time.monotonic() + 120
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be interrupted; use more shards"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    if sig == signal.SIGINT:
        assert proc.returncode == 130 and "re-run the same command to resume" in err
    else:
        assert proc.returncode == -signal.SIGKILL
    assert not Path(f"{out}_text_document.idx").exists()
    done = len(list(Path(f"{out}.tokenize-work").glob("*.done.json")))
    assert 2 <= done < 12
    proc2 = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert proc2.returncode == 0, proc2.stderr
    assert json.loads(proc2.stdout)["documents"] == len(all_lines)
    assert f"({done} reused)" in proc2.stderr
    ref = megatron_classic(all_lines, llama31_tokenizer_dir, str(tmp_path / "ref"))
    assert same_bytes(f"{out}_text_document", ref)
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())


def test_killed_worker_fails_the_run_instead_of_hanging(tmp_path, llama31_tokenizer_dir, japanese_jsonl) -> None:
    """A worker killed (e.g. by the OOM killer) ends the run with exit 1; finished shards are kept."""
    d, all_lines = _many_shards(tmp_path, japanese_jsonl, 12)
    out = tmp_path / "o"
    cmd = [sys.executable, "-m", "launcher.data.cli", "-i", str(d), "-t", str(llama31_tokenizer_dir), "-o", str(out),
           "-j", "2", "-q"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    marker = Path(f"{out}.tokenize-work") / "00000.done.json"
    deadline = time.monotonic() + 120
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True, check=False).stdout.split()
    assert proc.poll() is None and children, "the run ended before a worker could be killed"
    os.kill(int(children[0]), signal.SIGKILL)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    assert "worker process died" in err and "re-run the same command to resume" in err
    assert not Path(f"{out}_text_document.idx").exists()
    proc2 = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
    assert proc2.returncode == 0, proc2.stderr
    ref = megatron_classic(all_lines, llama31_tokenizer_dir, str(tmp_path / "ref"))
    assert same_bytes(f"{out}_text_document", ref)
