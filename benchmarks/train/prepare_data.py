"""Builds the GPU run's inputs: the real Llama-3.1 tokenizer and Japanese text as Megatron .bin/.idx.

Offline, from registry packages only (../shared/REFERENCE.md section 5): npm ``llama3-tokenizer-js@1.2.0`` holds
Meta's vocabulary and merges; Debian ``debian-reference-ja`` holds ~1 MB of Japanese prose. The vocabulary is
Meta's (Llama 3.1 Community License): the output goes to a folder ignored by git and is never committed.

usage: python benchmarks/train/prepare_data.py OUT_DIR [--npm-tgz llama3-tokenizer-js-1.2.0.tgz] [--repeat N]
  -> OUT_DIR/tokenizer/{tokenizer.json,tokenizer_config.json,special_tokens_map.json,config.json}
     OUT_DIR/ja_text_document.{bin,idx} (train), ja_valid_text_document, ja_test_text_document
Where the data stage (``launcher.data``) exists, prefer its output; this script is the stand-in the GPU run used.
"""

from __future__ import annotations

import argparse
import base64
import gzip
import hashlib
import io
import json
import re
import struct
import sys
import tarfile
from pathlib import Path

import numpy as np

META_SHA256 = "76e48799b099d43365bd24ccd8ecc5aedac831718da780552f03b0a6eb4412aa"
SPLIT_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
BOS, EOS = 128000, 128001


def special_tokens() -> list[str]:
    names = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>", "<|reserved_special_token_1|>",
             "<|finetune_right_pad_id|>", "<|reserved_special_token_2|>", "<|start_header_id|>", "<|end_header_id|>",
             "<|eom_id|>", "<|eot_id|>", "<|python_tag|>"]
    names += [f"<|reserved_special_token_{i}|>" for i in range(3, 248)]
    assert len(names) == 256
    return names


def read_npm(tgz: Path) -> tuple[list[str], list[tuple[int, int]]]:
    with tarfile.open(tgz) as tf:
        member = tf.extractfile("package/src/data-converted.js")
        assert member is not None
        js = member.read().decode()
    vocab_b64 = re.search(r'llama_vocab_base64 = "([^"]+)"', js).group(1)  # type: ignore[union-attr]
    merges_b64 = re.search(r'llama_merges_binary = "([^"]+)"', js).group(1)  # type: ignore[union-attr]
    vocab = base64.b64decode(vocab_b64).decode("utf-8").split("\n")
    raw = base64.b64decode(merges_b64)
    bits = int.from_bytes(raw, "big")
    nbits = len(raw) * 8
    n = nbits // 17
    ids = [(bits >> (nbits - 17 * (i + 1))) & 0x1FFFF for i in range(n)]
    merges = [(ids[2 * i], ids[2 * i + 1]) for i in range(n // 2)]
    return vocab, merges


def tokenizer_json(vocab: list[str], merges: list[tuple[int, int]]) -> str:
    added = [
        {"id": 128000 + i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": True}
        for i, t in enumerate(special_tokens())
    ]
    d = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": SPLIT_REGEX}, "behavior": "Isolated", "invert": False},
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
            ],
        },
        "post_processor": {
            "type": "Sequence",
            "processors": [
                {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
                {
                    "type": "TemplateProcessing",
                    "single": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}},
                               {"Sequence": {"id": "A", "type_id": 0}}],
                    "pair": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}},
                             {"Sequence": {"id": "A", "type_id": 0}},
                             {"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 1}},
                             {"Sequence": {"id": "B", "type_id": 1}}],
                    "special_tokens": {"<|begin_of_text|>": {"id": "<|begin_of_text|>", "ids": [128000],
                                                             "tokens": ["<|begin_of_text|>"]}},
                },
            ],
        },
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
            "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": True,
            "vocab": {t: i for i, t in enumerate(vocab)},
            "merges": [f"{vocab[a]} {vocab[b]}" for a, b in merges],
        },
    }
    return json.dumps(d, indent=2, ensure_ascii=False) + "\n"


CJK = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uff00-\uffef]")


def japanese_docs(path: Path) -> list[str]:
    """Paragraphs of the Debian reference (ja), hard wraps re-joined (no space between CJK characters)."""
    text = gzip.open(path, "rt", encoding="utf-8").read()
    docs = []
    for para in re.split(r"\n\s*\n", text):
        lines = [ln.strip() for ln in para.splitlines() if ln.strip()]
        if not lines:
            continue
        out = lines[0]
        for ln in lines[1:]:
            if CJK.match(out[-1]) and CJK.match(ln[0]):
                out += ln
            else:
                out += " " + ln
        if len(CJK.findall(out)) >= 10:
            docs.append(out)
    return docs


def write_indexed(prefix: Path, docs_ids: list[list[int]]) -> None:
    """Megatron IndexedDataset v1, int32 tokens (vocab >= 65500), one sequence per document."""
    lengths = np.array([len(d) for d in docs_ids], dtype=np.int32)
    offsets = np.zeros(len(docs_ids), dtype=np.int64)
    if len(docs_ids) > 1:
        offsets[1:] = np.cumsum(lengths[:-1].astype(np.int64) * 4)
    with open(f"{prefix}.bin", "wb") as f:
        for d in docs_ids:
            f.write(np.asarray(d, dtype=np.int32).tobytes())
    with open(f"{prefix}.idx", "wb") as f:
        f.write(b"MMIDIDX\x00\x00")
        f.write(struct.pack("<Q", 1))
        f.write(struct.pack("<B", 4))
        f.write(struct.pack("<Q", len(docs_ids)))
        f.write(struct.pack("<Q", len(docs_ids) + 1))
        f.write(lengths.tobytes())
        f.write(offsets.tobytes())
        f.write(np.arange(len(docs_ids) + 1, dtype=np.int64).tobytes())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--npm-tgz", type=Path, default=Path("/tmp/tokbuild/llama3-tokenizer-js-1.2.0.tgz"))
    ap.add_argument("--ja", type=Path, default=Path("/usr/share/debian-reference/debian-reference.ja.txt.gz"))
    ap.add_argument("--repeat", type=int, default=1, help="repeat the training documents N times (more steps)")
    a = ap.parse_args(argv)
    tokdir = a.out / "tokenizer"
    tokdir.mkdir(parents=True, exist_ok=True)
    vocab, merges = read_npm(a.npm_tgz)
    text = tokenizer_json(vocab, merges)
    (tokdir / "tokenizer.json").write_text(text, encoding="utf-8")
    sha = hashlib.sha256(text.encode()).hexdigest()
    print(f"tokenizer.json {len(text.encode())} bytes sha256 {sha} ({'== Meta' if sha == META_SHA256 else 'differs from Meta'})",
          file=sys.stderr)
    (tokdir / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>", "clean_up_tokenization_spaces": True,
        "model_input_names": ["input_ids", "attention_mask"], "model_max_length": 131072,
        "tokenizer_class": "PreTrainedTokenizerFast"}, indent=2) + "\n")
    (tokdir / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>"}, indent=2) + "\n")

    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(text)
    for s, want in (("This is a test sentence.", [2028, 374, 264, 1296, 11914, 13]), ("Hello world!", [9906, 1917, 0])):
        got = tok.encode(s).ids
        assert got == [BOS] + want, (s, got)
    docs = japanese_docs(a.ja)
    enc = tok.encode_batch(docs)
    ids = [e.ids + [EOS] for e in enc]  # BOS from the post-processor, EOD appended (Megatron --append-eod)
    n = len(ids)
    valid, test, train = ids[: n // 20], ids[n // 20: n // 10], ids[n // 10:]
    write_indexed(a.out / "ja_text_document", train * a.repeat)
    write_indexed(a.out / "ja_valid_text_document", valid)
    write_indexed(a.out / "ja_test_text_document", test)
    ntok = sum(len(d) for d in train)
    print(f"{n} docs; train {len(train)} docs x{a.repeat} = {ntok * a.repeat} tokens; valid {len(valid)}; test {len(test)}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
