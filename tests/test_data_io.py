"""Inputs (files, .gz, globs, directories), the .idx reader/writer, stats, budget, blend and the CLI contract."""

from __future__ import annotations

import argparse
import gzip
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from launcher.data import (
    DataError,
    count_tokens,
    read_blend,
    read_stats,
    supported_steps,
    tokenize_jsonl,
    write_blend,
)
from launcher.data.blend import BlendError
from launcher.data.indexed import (
    IndexedWriter,
    IndexFormatError,
    read_document,
    read_index,
)
from tests.test_data_oracle import megatron_classic, read_lines, same_bytes

REPO = Path(__file__).resolve().parents[1]


def _texts(n: int, tag: str) -> list[str]:
    return [json.dumps({"text": f"{tag} 文書 {i}: これはテストです。"}, ensure_ascii=False) + "\n" for i in range(n)]


# ----------------------------------------------------------------------------- indexed format


@pytest.mark.parametrize("dtype", [np.int32, np.uint16])
@pytest.mark.parametrize("n_docs", [0, 1, 57])
def test_writer_matches_megatron_builder(tmp_path, dtype, n_docs) -> None:
    from megatron.core.datasets.indexed_dataset import (
        IndexedDataset,
        IndexedDatasetBuilder,
    )

    rng = np.random.default_rng(n_docs)
    docs = [rng.integers(0, 60000, size=int(rng.integers(1, 300))) for _ in range(n_docs)]
    b = IndexedDatasetBuilder(str(tmp_path / "m.bin"), dtype=dtype)
    for doc in docs:
        b.add_document(doc, [len(doc)])
    b.finalize(str(tmp_path / "m.idx"))
    w = IndexedWriter(tmp_path / "o", dtype)
    for k in range(0, n_docs, 10):  # batches, like the workers'
        part = docs[k:k + 10]
        w.add_documents(np.concatenate(part), np.array([len(d) for d in part]))
    w.finalize()
    assert same_bytes(str(tmp_path / "o"), str(tmp_path / "m"))
    info = read_index(tmp_path / "m")
    assert info.sequences == n_docs and info.tokens == sum(map(len, docs))
    if n_docs:
        assert read_document(info, n_docs - 1).tolist() == docs[-1].tolist()
        ds = IndexedDataset(str(tmp_path / "o"))  # keep it alive: its items are views of its mmap
        assert ds[0].tolist() == docs[0].tolist()


def test_reader_rejects_truncated_files(tmp_path) -> None:
    w = IndexedWriter(tmp_path / "d", np.int32)
    w.add_documents(np.arange(10), np.array([4, 6]))
    w.finalize()
    assert count_tokens(tmp_path / "d") == 10
    data = (tmp_path / "d.bin").read_bytes()
    (tmp_path / "d.bin").write_bytes(data[:-4])
    with pytest.raises(DataError, match=r"d\.bin: 36 bytes, but .* 10 tokens"):
        count_tokens(tmp_path / "d")
    (tmp_path / "d.idx").write_bytes(b"NOTMAGIC" + b"\0" * 40)
    with pytest.raises(IndexFormatError, match="not a Megatron index"):
        read_index(tmp_path / "d")


def test_writer_abort_leaves_nothing(tmp_path) -> None:
    w = IndexedWriter(tmp_path / "x", np.int32)
    w.add_documents(np.arange(3), np.array([3]))
    w.abort()
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------- inputs


def test_gz_globs_directories_in_order(tmp_path, llama31_tokenizer_dir) -> None:
    d = tmp_path / "corpus"
    (d / "sub").mkdir(parents=True)
    a, b, c = _texts(5, "a"), _texts(7, "b"), _texts(3, "c")
    with gzip.open(d / "b.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write("".join(b))
    (d / "a.jsonl").write_text("".join(a), encoding="utf-8")
    (d / "sub" / "c.jsonl").write_text("".join(c), encoding="utf-8")
    (d / "notes.txt").write_text("ignored by directory expansion")
    ref = megatron_classic(a + b + c, llama31_tokenizer_dir, str(tmp_path / "ref"))
    res = tokenize_jsonl([str(d)], str(llama31_tokenizer_dir), str(tmp_path / "dir"), workers=2)
    assert same_bytes(res.outputs["text"], ref) and res.shards_total == 3
    # explicit order is kept; a file named twice is read once
    res = tokenize_jsonl([str(d / "sub" / "c.jsonl"), str(d / "*.jsonl*"), str(d / "a.jsonl")],
                         str(llama31_tokenizer_dir), str(tmp_path / "glob"), workers=1)
    assert same_bytes(res.outputs["text"], megatron_classic(c + a + b, llama31_tokenizer_dir, str(tmp_path / "ref2")))


@pytest.mark.parametrize("bad, match", [
    ("missing.jsonl", "no such file"),
    ("nomatch_*.jsonl", "matches no file"),
])
def test_bad_input_paths(tmp_path, llama31_tokenizer_dir, bad, match) -> None:
    with pytest.raises(DataError, match=match):
        tokenize_jsonl([str(tmp_path / bad)], str(llama31_tokenizer_dir), str(tmp_path / "o"), workers=1)


def _tok_copy(src: Path, dst: Path, **config_changes) -> Path:
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "tokenizer_config.json").read_text())
    cfg.update(config_changes)
    (dst / "tokenizer_config.json").write_text(json.dumps(cfg))
    return dst


def test_eot_eod_refused_unless_allowed(tmp_path, llama31_tokenizer_dir) -> None:
    tok = _tok_copy(llama31_tokenizer_dir, tmp_path / "instruct", eos_token="<|eot_id|>")
    src = tmp_path / "x.jsonl"
    src.write_text("".join(_texts(3, "x")), encoding="utf-8")
    with pytest.raises(DataError, match=r"eos_token=\"<\|eot_id\|>\" \(id 128009\).*--allow-eot-eod"):
        tokenize_jsonl([str(src)], str(tok), str(tmp_path / "o"), workers=1)
    res = tokenize_jsonl([str(src)], str(tok), str(tmp_path / "o"), workers=1, allow_eot_eod=True)
    assert same_bytes(res.outputs["text"], megatron_classic(read_lines(src), tok, str(tmp_path / "ref")))
    info = read_index(res.outputs["text"])
    assert read_document(info, 0)[-1] == 128009


def test_tokenizer_without_config_is_refused(tmp_path, llama31_tokenizer_dir) -> None:
    d = tmp_path / "tok"
    d.mkdir()
    shutil.copy(llama31_tokenizer_dir / "tokenizer.json", d)
    src = tmp_path / "x.jsonl"
    src.write_text("".join(_texts(1, "x")), encoding="utf-8")
    with pytest.raises(DataError, match="no tokenizer_config.json"):
        tokenize_jsonl([str(src)], str(d), str(tmp_path / "o"), workers=1)


# ------------------------------------------------------------------------- stats and budget


def test_supported_steps() -> None:
    assert supported_steps(0, 1024, 8192) == 0
    assert supported_steps(1024 * 8192, 1024, 8192) == 0  # needs one extra token (seq + 1 per sample)
    assert supported_steps(1024 * 8192 + 1, 1024, 8192) == 1
    assert supported_steps(150 * 1024 * 8192 + 1, 1024, 8192) == 150
    with pytest.raises(ValueError):
        supported_steps(10, 0, 8192)


def test_stats_json_and_up_to_date(tmp_path, llama31_tokenizer_dir, japanese_jsonl) -> None:
    out = tmp_path / "ja"
    res = tokenize_jsonl([str(japanese_jsonl)], str(llama31_tokenizer_dir), str(out), workers=2,
                         global_batch_size=2, seq_length=1024)
    st = json.loads(Path(f"{out}_text_document.stats.json").read_text())
    assert st["documents"] == 2561 and st["tokens"] == count_tokens(f"{out}_text_document") == res.tokens
    assert st["text_bytes"] == sum(len(json.loads(ln)["text"].encode()) for ln in read_lines(japanese_jsonl))
    dist = st["tokens_per_document"]
    assert 3 <= dist["min"] <= dist["p10"] <= dist["p50"] <= dist["p90"] <= dist["p99"] <= dist["max"]
    assert sum(dist["histogram"].values()) == 2561
    assert st["token_budget"]["supported_steps"] == supported_steps(st["tokens"], 2, 1024) > 0
    assert st["skipped"]["total"] == 0 and st["tokenizer"]["eod_id"] == 128001 and st["tokenizer"]["dtype"] == "int32"
    assert read_stats(f"{out}_text_document")["token_budget"] == st["token_budget"]
    again = tokenize_jsonl([str(japanese_jsonl)], str(llama31_tokenizer_dir), str(out), workers=2,
                           global_batch_size=2, seq_length=1024)
    assert again.up_to_date and again.tokens == res.tokens


# ------------------------------------------------------------------------------------ blend


def test_blend_file(tmp_path) -> None:
    for name in ("ja", "en"):
        w = IndexedWriter(tmp_path / f"{name}_text_document", np.int32)
        w.add_documents(np.arange(4), np.array([4]))
        w.finalize()
    blend = tmp_path / "blend.json"
    ja, en = str(tmp_path / "ja_text_document"), str(tmp_path / "en_text_document")
    write_blend(blend, [(0.9, ja)])
    write_blend(blend, [(0.1, en)])
    assert json.loads(blend.read_text()) == [0.9, ja, 0.1, en]
    write_blend(blend, [(0.8, ja)])  # replaced in place
    assert read_blend(blend) == [(0.8, ja), (0.1, en)]
    with pytest.raises(BlendError, match="weight -1"):
        write_blend(blend, [(-1, ja)])
    with pytest.raises(BlendError, match="no such file"):
        write_blend(blend, [(1, str(tmp_path / "missing_text_document"))])
    blend.write_text('[0.5, "a", "b"]')
    with pytest.raises(BlendError, match="even length"):
        read_blend(blend)


# -------------------------------------------------------------------------------------- CLI


def test_cli_contract_and_blend(tmp_path, llama31_tokenizer_dir, capsys) -> None:
    from launcher.data import cli

    ja, en = tmp_path / "ja.jsonl", tmp_path / "en.jsonl"
    ja.write_text("".join(_texts(20, "ja")), encoding="utf-8")
    en.write_text("".join(json.dumps({"text": f"English replay document {i}."}) + "\n" for i in range(10)))
    ap = argparse.ArgumentParser()
    cli.add_arguments(ap)
    blend = tmp_path / "blend.json"
    for src, name, weight in ((ja, "ja_wiki", "0.9"), (en, "en", "0.1")):
        args = ap.parse_args(["--input", str(src), "--tokenizer", str(llama31_tokenizer_dir), "--output",
                              str(tmp_path / name), "--workers", "1", "--blend", str(blend), "--weight", weight])
        assert cli.run(args) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["outputs"] == {"text": str(tmp_path / f"{name}_text_document")}
    assert json.loads(blend.read_text()) == [0.9, str(tmp_path / "ja_wiki_text_document"),
                                             0.1, str(tmp_path / "en_text_document")]
    args = ap.parse_args(["-i", str(ja), "-t", str(llama31_tokenizer_dir), "-o", str(tmp_path / "z"), "-j", "0"])
    assert cli.run(args) == 2
    assert "--workers 0" in capsys.readouterr().err


def test_cpt_launch_tokenize_subcommand(tmp_path, llama31_tokenizer_dir) -> None:
    src = tmp_path / "x.jsonl"
    src.write_text("".join(_texts(30, "x")), encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, "-c", "import sys; from launcher.cli import main; sys.exit(main(sys.argv[1:]))",
         "tokenize", "--input", str(src), "--tokenizer", str(llama31_tokenizer_dir), "--output", str(tmp_path / "x"),
         "--workers", "2"],
        cwd=REPO, capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["documents"] == 30
    assert "tokenize: budget:" in proc.stderr  # the summary on stderr, and progress: not a terminal, so plain
    # lines (tqdm's format, no carriage returns) -- the last one at 100%
    bars = [line for line in proc.stderr.splitlines() if re.match(r"tokenize: +\d+%\|", line)]
    assert bars and "100%|" in bars[-1] and "docs/s" in bars[-1], proc.stderr
    assert "\r" not in proc.stderr


def test_launcher_data_imports_no_torch_or_megatron() -> None:
    code = ("import sys, launcher.data, launcher.data.cli, launcher.data.tokenize, launcher.data.indexed; "
            "bad = [m for m in ('torch', 'megatron', 'transformers') if m in sys.modules]; print(bad); sys.exit(bool(bad))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_cli_json_keys_megatron_style_and_repeated() -> None:
    from launcher.data import cli

    ap = argparse.ArgumentParser()
    cli.add_arguments(ap)
    base = ["-i", "x.jsonl", "-t", "tok", "-o", "out"]
    assert ap.parse_args(base + ["--json-keys", "text", "title"]).json_keys == ["text", "title"]
    assert ap.parse_args(base + ["--json-key", "text", "--json-key", "title"]).json_keys == ["text", "title"]
    assert ap.parse_args(base).json_keys is None  # run() uses ["text"]


def test_fixture_that_cannot_be_built_fails_loudly(tmp_path, monkeypatch) -> None:
    from tests.fixtures import real_data

    monkeypatch.setenv("CPT_FIXTURE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))  # no npm
    with pytest.raises(real_data.FixtureError, match="npm"):
        real_data.build_llama31_tokenizer(tmp_path / "tok")
    with pytest.raises(real_data.FixtureError, match="apt-get install"):
        real_data.build_japanese_jsonl(tmp_path / "ja.jsonl", source=tmp_path / "missing.txt.gz")
