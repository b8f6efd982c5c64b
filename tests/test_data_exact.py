"""Exactness of the data stage against Megatron's classic path (megatron-core's builder + transformers)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from launcher.data import count_tokens, read_stats, tokenize_jsonl
from launcher.data.indexed import read_index
from tests.fixtures.real_data import TOKENIZER_JSON_SHA256
from tests.test_data_oracle import (
    hf_tokenizer,
    megatron_classic,
    read_lines,
    same_bytes,
)

EDGE_TEXTS = [
    "This is a test sentence.",
    "a<|end_of_text|>b",  # special-token strings inside text: HF splits them out as special ids
    "x <|eot_id|> y<|begin_of_text|>z<|reserved_special_token_5|>",
    "<|end_of_text",  # a near miss is plain text
    "<|END_OF_TEXT|>",
    "line one\r\nline two\rline three\n",
    "   ",
    "\t\n",
    "日本語のテキスト。\n\n次の段落です。",
    "ｱｲｳｴｵ　全角スペース",
    "emoji 😀👍🏽 and \u200b zero width \ufeff BOM inside",
    "I'M HERE, you're THERE'S 'll 'Ve ſ K İ",
    "12345678 ３４５ ٣٤ Ⅻ ½",
    "\u2028sep\u2029sep\u0085",
    "\x00 control \x7f chars \x1b[0m",
    "a" * 5000,
    "あ" * 3000,
]


def _write_jsonl(path: Path, texts: list[str], key: str = "text", crlf: bool = False) -> Path:
    end = "\r\n" if crlf else "\n"
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.writelines(json.dumps({"id": i, key: t}) + end for i, t in enumerate(texts))
    return path


def test_tokenizer_fixture_is_metas(llama31_tokenizer_dir: Path) -> None:
    data = (llama31_tokenizer_dir / "tokenizer.json").read_bytes()
    assert hashlib.sha256(data).hexdigest() == TOKENIZER_JSON_SHA256
    assert len(data) == 9_085_658
    tok = hf_tokenizer(str(llama31_tokenizer_dir))
    assert tok("This is a test sentence.").input_ids == [128000, 2028, 374, 264, 1296, 11914, 13]
    assert tok("Hello world!").input_ids == [128000, 9906, 1917, 0]
    assert (tok.bos_token_id, tok.eos_token_id, len(tok)) == (128000, 128001, 128256)


@pytest.mark.parametrize("workers", [1, 2])
def test_japanese_byte_identical_to_megatron(tmp_path, llama31_tokenizer_dir, japanese_jsonl, workers) -> None:
    ref = megatron_classic(read_lines(japanese_jsonl), llama31_tokenizer_dir, str(tmp_path / "ref"))
    res = tokenize_jsonl([str(japanese_jsonl)], str(llama31_tokenizer_dir), str(tmp_path / "ours"), workers=workers,
                         block_bytes=64 << 10)
    ours = res.outputs["text"]
    assert ours == str(tmp_path / "ours_text_document")
    assert same_bytes(ours, ref)
    assert res.skipped == 0 and res.documents == 2561

    # megatron-core reads our files back
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    ds = IndexedDataset(ours)
    assert len(ds) == 2561
    tok = hf_tokenizer(str(llama31_tokenizer_dir))
    first = json.loads(read_lines(japanese_jsonl)[0])["text"]
    assert ds[0].tolist() == tok(first).input_ids + [128001]
    assert ds[0].dtype == np.int32
    assert count_tokens(ours) == int(ds.sequence_lengths.sum())
    st = read_stats(ours)
    assert st["documents"] == 2561 and st["tokens"] == count_tokens(ours) and st["dtype"] == "int32"


@pytest.mark.parametrize("engine", ["gigatoken", "tiktoken", "hf"])
def test_edge_cases_every_engine_matches_megatron(tmp_path, llama31_tokenizer_dir, engine) -> None:
    src = _write_jsonl(tmp_path / "edge.jsonl", EDGE_TEXTS, crlf=True)
    ref = megatron_classic(read_lines(src), llama31_tokenizer_dir, str(tmp_path / "ref"))
    res = tokenize_jsonl([str(src)], str(llama31_tokenizer_dir), str(tmp_path / engine), workers=1, engine=engine)
    assert res.engine == engine
    assert same_bytes(res.outputs["text"], ref)
    # the special-token string became the special id, as in transformers
    info = read_index(res.outputs["text"])
    doc1 = np.fromfile(res.outputs["text"] + ".bin", dtype=np.int32)[info.pointers[1] // 4:][: info.lengths[1]]
    assert doc1.tolist() == [128000, 64, 128001, 65, 128001]


def test_random_strings_match_transformers(tmp_path, llama31_tokenizer_dir) -> None:
    """Fuzz: random mixes of tricky characters and special-token strings, auto engine vs Megatron."""
    rng = np.random.default_rng(7)
    alphabet = list("aAsStT'’ \t\n\r0123456789.!?<|>") + [
        "\r\n", "\u3000", "\u00a0", "日", "本", "。", "ア", "ｱ", "한", "ع", "😀", "e\u0301", "ß", "İ", "\u017f",
        "<|end_of_text|>", "<|eot_id|>", "<|begin_of_text|>", "<|", "|>", "  ", "\u2028", "\x0b",
    ]
    texts = ["".join(rng.choice(alphabet, size=int(rng.integers(1, 40)))) for _ in range(3000)]
    src = _write_jsonl(tmp_path / "fuzz.jsonl", texts)
    ref = megatron_classic(read_lines(src), llama31_tokenizer_dir, str(tmp_path / "ref"))
    res = tokenize_jsonl([str(src)], str(llama31_tokenizer_dir), str(tmp_path / "ours"), workers=2, block_bytes=8192)
    assert same_bytes(res.outputs["text"], ref)


def test_empty_text_kept_like_megatron_with_keep_empty(tmp_path, llama31_tokenizer_dir) -> None:
    texts = ["before", "", "after"]
    src = _write_jsonl(tmp_path / "e.jsonl", texts)
    ref = megatron_classic(read_lines(src), llama31_tokenizer_dir, str(tmp_path / "ref"))
    # Megatron: tokenizer("") = [BOS], so the empty document is [BOS, EOD]
    ref_info = read_index(ref)
    assert ref_info.lengths.tolist()[1] == 2
    res = tokenize_jsonl([str(src)], str(llama31_tokenizer_dir), str(tmp_path / "keep"), workers=1, keep_empty=True)
    assert same_bytes(res.outputs["text"], ref)
    # default: skipped and reported with file and line
    res = tokenize_jsonl([str(src)], str(llama31_tokenizer_dir), str(tmp_path / "skip"), workers=1)
    assert res.documents == 2 and res.skipped_by_reason == {"empty": 1}
    ex = res.stats["text"]["skipped"]["examples"][0]
    assert (ex["file"], ex["line"], ex["reason"]) == (str(src), 2, "empty")
    assert same_bytes(res.outputs["text"], megatron_classic(
        [ln for i, ln in enumerate(read_lines(src)) if i != 1], llama31_tokenizer_dir, str(tmp_path / "ref2")))


def test_several_keys_one_output_each(tmp_path, llama31_tokenizer_dir) -> None:
    src = tmp_path / "two.jsonl"
    with open(src, "w", encoding="utf-8") as f:
        f.writelines(json.dumps({"text": f"本文 {i} です。", "title": f"Title <|eot_id|> {i}"}, ensure_ascii=False) + "\n" for i in range(50))
    res = tokenize_jsonl([str(src)], str(llama31_tokenizer_dir), str(tmp_path / "o"), workers=2,
                         json_keys=("text", "title"))
    lines = read_lines(src)
    for key in ("text", "title"):
        ref = megatron_classic(lines, llama31_tokenizer_dir, str(tmp_path / "ref"), key=key)
        assert res.outputs[key] == str(tmp_path / f"o_{key}_document")
        assert same_bytes(res.outputs[key], ref)
        assert Path(res.outputs[key] + ".stats.json").is_file()


def test_shard_merge_equals_single_pass_and_megatron_merge(tmp_path, llama31_tokenizer_dir, japanese_jsonl) -> None:
    lines = read_lines(japanese_jsonl)
    parts = [lines[:1000], lines[1000:1001], lines[1001:]]
    paths = []
    for n, part in enumerate(parts):
        p = tmp_path / f"part_{n}.jsonl"
        p.write_text("".join(part), encoding="utf-8")
        paths.append(str(p))
    (tmp_path / "part_3.jsonl").write_text("", encoding="utf-8")  # an empty shard merges to nothing
    single = megatron_classic(lines, llama31_tokenizer_dir, str(tmp_path / "single"))
    res = tokenize_jsonl([str(tmp_path / "part_*.jsonl")], str(llama31_tokenizer_dir), str(tmp_path / "ours"), workers=2)
    assert res.shards_total == 4
    assert same_bytes(res.outputs["text"], single)

    # megatron-core's own merge (add_index) of per-shard outputs gives the same bytes too
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    shard_prefixes = [megatron_classic(part, llama31_tokenizer_dir, str(tmp_path / f"m{n}")) for n, part in enumerate(parts)]
    merged = str(tmp_path / "merged_text_document")
    b = IndexedDatasetBuilder(merged + ".bin", dtype=np.int32)
    for sp in shard_prefixes:
        b.add_index(sp)
    b.finalize(merged + ".idx")
    assert same_bytes(merged, single)


def test_small_vocab_is_uint16(tmp_path) -> None:
    """A vocabulary under 65500 gives uint16, like Megatron's DType.optimal_dtype."""
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )

    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=500, special_tokens=["<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    corpus = ["the quick brown fox jumps over the lazy dog", "日本語の文章です。"] * 50
    tok.train_from_iterator(corpus, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    d = tmp_path / "tok"
    d.mkdir()
    tok.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<s>", "eos_token": "</s>", "tokenizer_class": "PreTrainedTokenizerFast"}))
    src = _write_jsonl(tmp_path / "s.jsonl", corpus[:10] + ["a</s>b", "   x"])
    ref = megatron_classic(read_lines(src), str(d), str(tmp_path / "ref"))
    res = tokenize_jsonl([str(src)], str(d), str(tmp_path / "ours"), workers=1)
    assert read_index(res.outputs["text"]).dtype == np.uint16
    assert same_bytes(res.outputs["text"], ref)


def test_merge_of_shard_group_jobs_equals_one_pass(tmp_path, llama31_tokenizer_dir, japanese_jsonl) -> None:
    """Two tokenize jobs (shard groups, as on a cluster) + merge_datasets == one pass == Megatron."""
    from launcher.data import merge_datasets

    lines = read_lines(japanese_jsonl)
    halves = [lines[:1234], lines[1234:]]
    prefixes = []
    for n, part in enumerate(halves):
        src = tmp_path / f"g{n}.jsonl"
        src.write_text("".join(part), encoding="utf-8")
        prefixes.append(tokenize_jsonl([str(src)], str(llama31_tokenizer_dir), str(tmp_path / f"g{n}"),
                                       workers=1).outputs["text"])
    info = merge_datasets(prefixes, tmp_path / "all_text_document")
    assert info.documents == len(lines)
    assert same_bytes(str(tmp_path / "all_text_document"),
                      megatron_classic(lines, llama31_tokenizer_dir, str(tmp_path / "ref")))
