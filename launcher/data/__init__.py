"""The data stage: JSONL -> Megatron ``.bin/.idx`` (byte-identical to Megatron's preprocess_data.py), fast.

Python API (numpy only at import; tokenizer libraries load when tokenizing):
    tokenize_jsonl(inputs, tokenizer_dir, output_prefix, *, workers, json_keys=("text",), strict=False)
    read_stats(prefix) / count_tokens(prefix)      cheap numbers of a prepared ..._text_document prefix
    supported_steps(tokens, gbs, seq)              the token budget in optimizer steps
    write_blend(path, [(weight, prefix), ...])     the weighted data_prefix list the training recipe reads
    merge_datasets(prefixes, output_prefix)        join the outputs of several tokenize jobs (shard groups)
"""

from launcher.data.blend import read_blend, write_blend
from launcher.data.indexed import merge_datasets
from launcher.data.tokenize import (
    DataError,
    TokenizeResult,
    count_tokens,
    read_stats,
    supported_steps,
    tokenize_jsonl,
)

__all__ = [
    "DataError", "TokenizeResult", "count_tokens", "merge_datasets", "read_blend", "read_stats", "supported_steps",
    "tokenize_jsonl", "write_blend",
]
