"""The oracle for the data-stage tests: Megatron's classic path, run with megatron-core's own builder.

Mirrors ``tools/preprocess_data.py --json-keys KEY --append-eod`` with an HF tokenizer: per JSON line
``tokenizer(text).input_ids`` then ``eos_token_id``, ``IndexedDatasetBuilder.add_document``, dtype from
``DType.optimal_dtype(len(tokenizer))``, output ``{prefix}_{key}_document``. Imports torch/megatron: tests only.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path


@lru_cache(maxsize=4)
def hf_tokenizer(directory: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(directory)


def megatron_classic(lines: list[str], tokenizer_dir: str, output_prefix: str, key: str = "text") -> str:
    """Write what Megatron writes for these JSONL lines; return the dataset prefix."""
    from megatron.core.datasets.indexed_dataset import DType, IndexedDatasetBuilder

    tok = hf_tokenizer(str(tokenizer_dir))
    prefix = f"{output_prefix}_{key}_document"
    Path(prefix).parent.mkdir(parents=True, exist_ok=True)
    builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=DType.optimal_dtype(len(tok)))
    for line in lines:
        text = json.loads(line)[key]
        ids = tok(text).input_ids
        if len(ids) > 0:  # preprocess_data.py: EOD only for a non-empty token list
            ids = ids + [tok.eos_token_id]
        builder.add_document(ids, [len(ids)] if ids else [])
    builder.finalize(f"{prefix}.idx")
    return prefix


def read_lines(path: str | Path) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [ln for ln in f]


def same_bytes(a: str, b: str) -> bool:
    return all(Path(a + s).read_bytes() == Path(b + s).read_bytes() for s in (".bin", ".idx"))
