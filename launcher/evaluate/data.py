"""``--data NAME=GLOB|PREFIX``: held-out documents as token ids, in the order a reader can reproduce.

A GLOB names JSONL files (``.jsonl`` or ``.jsonl.gz``, field ``text``), tokenized here with each model's own
tokenizer (``tokenizer(text).input_ids``: for Llama-3 that is BOS + the text, no EOS). A PREFIX names a prepared
Megatron ``..._text_document`` dataset (the run's validation data may only exist in that form): its tokens are
used as stored (BOS ... EOD, the run's tokenizer), for both models alike.
"""

from __future__ import annotations

import glob as globlib
import gzip
import json
import os
import re
from dataclasses import dataclass
from typing import Any, Iterator

NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,32}")


class EvalInputError(ValueError):
    """A bad --data/--prompts item: the message names the flag, the value and what is allowed."""


@dataclass(frozen=True)
class DataItem:
    name: str
    spec: str  # the glob or prefix as given

    @property
    def is_prefix(self) -> bool:
        from launcher.plan import is_prefix  # pure and light

        return is_prefix(self.spec)

    @property
    def prefix(self) -> str:
        return self.spec[:-4] if self.spec.endswith((".bin", ".idx")) else self.spec


def parse_data_item(value: str) -> DataItem:
    """``ja=data/ja/*.jsonl`` -> DataItem("ja", "data/ja/*.jsonl"); the NAME= part is required."""
    name, sep, spec = value.partition("=")
    if not sep or not NAME_RE.fullmatch(name) or not spec:
        raise EvalInputError(f"--data {value!r}: expected NAME=GLOB or NAME=PREFIX, NAME of 1-32 letters, digits, "
                             "'_' or '-' (e.g. --data ja='heldout/ja_*.jsonl' --data en=ds/en_val_text_document)")
    return DataItem(name, os.path.expanduser(spec))


def parse_data_items(values: list[str]) -> list[DataItem]:
    items = [parse_data_item(v) for v in values]
    names = [i.name for i in items]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise EvalInputError(f"--data: name(s) {', '.join(dup)} given twice; each NAME once")
    for it in items:
        check_exists(it)
    return items


def jsonl_files(spec: str) -> list[str]:
    """The files a glob (or a file or directory) names, sorted: the document order is reproducible."""
    if os.path.isdir(spec):
        spec = os.path.join(spec, "*.jsonl*")
    return sorted(f for f in globlib.glob(spec) if os.path.isfile(f))


def check_exists(item: DataItem) -> None:
    """Fail before any model is loaded when an item names nothing."""
    if item.is_prefix:
        for ext in (".bin", ".idx"):
            if not os.path.isfile(item.prefix + ext):
                raise EvalInputError(f"--data {item.name}={item.spec}: {item.prefix}{ext} does not exist")
    elif not jsonl_files(item.spec):
        raise EvalInputError(f"--data {item.name}={item.spec}: no file matches (JSONL files or a glob of them, "
                             "or a Megatron ..._text_document prefix)")


def iter_texts(item: DataItem, key: str = "text") -> Iterator[str]:
    """Non-empty ``key`` fields of the JSONL files, file by file, line by line."""
    for path in jsonl_files(item.spec):
        opener: Any = gzip.open if path.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    text = json.loads(line)[key]
                except (ValueError, KeyError, TypeError) as e:
                    raise EvalInputError(f"{path}:{n}: not a JSON object with a string field {key!r} ({e})") from None
                if isinstance(text, str) and text.strip():
                    yield text


def prefix_documents(item: DataItem, max_docs: int) -> list[list[int]]:
    """The first ``max_docs`` documents of a Megatron dataset, as stored."""
    from launcher.data.indexed import read_document, read_index

    info = read_index(item.prefix)
    return [read_document(info, i).astype("int64").tolist() for i in range(min(max_docs, info.sequences))]


def documents(item: DataItem, tokenizer: Any, max_docs: int, key: str = "text") -> list[list[int]]:
    """Token ids of the first ``max_docs`` documents of ``item`` (JSONL: tokenized with ``tokenizer``)."""
    if item.is_prefix:
        return prefix_documents(item, max_docs)
    out: list[list[int]] = []
    for text in iter_texts(item, key):
        if len(out) >= max_docs:
            break
        out.append(list(tokenizer(text)["input_ids"]))
    return out
