"""Data mixes: ``--data WEIGHT:PATH`` and ``--valid-data NAME=PATH`` parsed, and blend weights resolved.

Pure Python (no numpy, no NeMo): the planner parses with it (no file is read), pre-flight and the train job
resolve token-proportional weights with it once the token counts are known.

Syntax rules (README "Data mixes", ``cpt-launch --help``):
  * A training item is ``WEIGHT:PATH`` when the text before its first ``:`` is made only of number characters
    (digits, ``.``, ``e``, ``+``, ``-``), e.g. ``0.9:ja/*.jsonl.gz``, ``3:en/replay``; anything else is a path, so
    ``s3://b/x``, ``/data/a:b`` and ``ja:v2/x`` are paths. A path that itself starts with a number and ``:`` is
    written ``./1:x``.
  * A validation item is ``NAME=PATH`` when the text before its first ``=`` is a set name ``[A-Za-z0-9_-]{1,32}``;
    otherwise it is a path of the unnamed set ``valid``. Items of one name form one set (their prefixes blended).
  * Weights: explicit ones are shares. When every item has one they are normalised (9 and 1 mean 0.9 and 0.1, as
    in Megatron). Items without one share what the explicit weights leave (1 - their sum, which must then be
    below 1) in proportion to their tokens; with no explicit weight at all that is Megatron's convention,
    weights proportional to tokens.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from launcher.errors import Problem

VALID_NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,32}")
DEFAULT_VALID_NAME = "valid"
_WEIGHT_HEAD_RE = re.compile(r"[0-9.eE+-]+")
# Epochs above which one part of a blend of several is said to repeat "more than a few times" (a warning): small
# replay sets are repeated on purpose, but 5+ passes over the same text start to be memorised.
REPEAT_WARN_EPOCHS = 4.0


@dataclass(frozen=True)
class DataItem:
    """One training input as the user wrote it: ``weight`` None = the default (proportional to tokens)."""

    where: str  # "--data 0.9:ja/x.jsonl" or "defaults.data[0] in clusters/x.yaml": named in every error
    path: str
    weight: float | None = None


@dataclass(frozen=True)
class ValidItem:
    where: str
    name: str
    path: str


def parse_data_item(text: str, where: str) -> tuple[DataItem | None, list[Problem]]:
    """``WEIGHT:PATH`` or ``PATH`` (rule in the module docstring)."""
    head, sep, rest = text.partition(":")
    if not sep or not _WEIGHT_HEAD_RE.fullmatch(head):
        return DataItem(where, text), []
    return weighted_item(rest, head, where)


def weighted_item(path: Any, weight: Any, where: str) -> tuple[DataItem | None, list[Problem]]:
    """Check a weight (a number or its text) and a path; errors name the item, the value and what is allowed."""
    allowed = "a positive finite number, e.g. --data 0.9:ja/train_*.jsonl.gz"
    w: float | None
    try:
        w = float(weight) if not isinstance(weight, bool) else None
    except (TypeError, ValueError):
        w = None
    if w is None:
        return None, [Problem("error", where, f"weight {weight!r} does not parse; allowed: {allowed}")]
    if not math.isfinite(w) or w <= 0:
        return None, [Problem("error", where, f"weight {weight!r} is not positive; allowed: {allowed}")]
    if not isinstance(path, str) or not path.strip():
        return None, [Problem("error", where, f"weight {weight!r} names no input (nothing after it); allowed: "
                                              "WEIGHT:PATH with a JSONL file/glob or a ..._text_document prefix")]
    return DataItem(where, path, w), []


def parse_valid_item(text: str, where: str) -> tuple[ValidItem | None, list[Problem]]:
    """``NAME=PATH`` or ``PATH`` (the unnamed set ``valid``). A head without ``/`` that is no allowed name is an
    error rather than a path: ``ja.wiki=x`` is a mistyped name far more often than a file of that name."""
    head, sep, rest = text.partition("=")
    if not sep or "/" in head:
        return ValidItem(where, DEFAULT_VALID_NAME, text), []
    if not VALID_NAME_RE.fullmatch(head):
        return None, [Problem("error", where, f"validation set name {head!r}: allowed: 1-32 letters, digits, '_' "
                                              "or '-' (NAME=GLOB|PREFIX, e.g. ja=ja_wiki/validation_0.jsonl.gz); "
                                              "a path containing '=' is written ./PATH")]
    if not rest.strip():
        return None, [Problem("error", where, f"validation set {head!r} names no input; allowed: NAME=GLOB|PREFIX")]
    return ValidItem(where, head, rest), []


def data_items(cli: Sequence[str], profile: Sequence[Any], source: str) -> tuple[list[DataItem], list[Problem]]:
    """The training inputs: ``--data`` if given, else the profile's ``defaults.data`` (strings or
    ``{path, weight}`` entries)."""
    items: list[DataItem] = []
    problems: list[Problem] = []
    for i, raw in enumerate(cli or profile):
        where = f"--data {raw}" if cli else f"defaults.data[{i}] in {source}"
        if isinstance(raw, str):
            item, probs = parse_data_item(raw, where)
        elif getattr(raw, "weight", None) is not None:
            item, probs = weighted_item(raw.path, raw.weight, where)
        else:
            item, probs = DataItem(where, str(raw.path)), []
        problems += probs
        if item is not None:
            items.append(item)
    return items, problems


def valid_items(cli: Sequence[str], profile: Sequence[Any], source: str) -> tuple[list[ValidItem], list[Problem]]:
    """The validation inputs: ``--valid-data`` if given, else ``defaults.valid_data`` (strings or {name, path})."""
    out: list[ValidItem] = []
    problems: list[Problem] = []
    for i, raw in enumerate(cli or profile):
        where = f"--valid-data {raw}" if cli else f"defaults.valid_data[{i}] in {source}"
        if not isinstance(raw, str):
            out.append(ValidItem(where, raw.name, raw.path))
            continue
        item, probs = parse_valid_item(raw, where)
        problems += probs
        if item is not None:
            out.append(item)
    return out, problems


def group_valid(items: Sequence[ValidItem]) -> list[tuple[str, list[ValidItem]]]:
    """Validation sets in order of first appearance; items of one name are one set."""
    sets: dict[str, list[ValidItem]] = {}
    for it in items:
        sets.setdefault(it.name, []).append(it)
    return list(sets.items())


# ------------------------------------------------------------------------------------------------- resolution


class MixError(ValueError):
    """Weights that cannot be resolved (tokens unknown, or explicit shares that leave nothing)."""


def resolve_weights(weights: Sequence[float | None], tokens: Sequence[int | None],
                    names: Sequence[str] = ()) -> list[float]:
    """Normalised weights (sum 1) of a blend: explicit shares kept, the rest proportional to tokens."""
    names = list(names) or [f"part {i}" for i in range(len(weights))]
    explicit = sum(w for w in weights if w is not None)
    open_parts = [i for i, w in enumerate(weights) if w is None]
    if not open_parts:
        return [float(w) / explicit for w in weights if w is not None]
    if explicit >= 1.0:
        raise MixError(f"explicit weights sum to {explicit:g}, leaving nothing for the unweighted "
                       f"{', '.join(names[i] for i in open_parts)}; give every part a weight or keep the explicit "
                       "ones below 1 in total (they are shares)")
    rest = 1.0 - explicit
    if len(open_parts) == 1:  # the one unweighted part takes the rest whatever its size
        return [float(w) if w is not None else rest for w in weights]
    missing = [names[i] for i in open_parts if tokens[i] is None]
    if missing:
        raise MixError(f"token counts unknown for {', '.join(missing)}: weights proportional to tokens need them")
    open_tokens = sum(int(tokens[i] or 0) for i in open_parts)
    if open_tokens <= 0:
        raise MixError(f"{', '.join(names[i] for i in open_parts)} hold no tokens")
    return [float(w) if w is not None else rest * int(tokens[i] or 0) / open_tokens for i, w in enumerate(weights)]


def epochs(shares: Sequence[float], tokens: Sequence[int | None], run_tokens: int) -> list[float | None]:
    """Passes over each dataset that ``run_tokens`` (steps x GBS x seq) take at these shares."""
    return [share * run_tokens / t if t else None for share, t in zip(shares, tokens)]


def megatron_prefix_list(shares: Sequence[float], prefixes: Sequence[str]) -> list[Any]:
    """Megatron's data_prefix: ``[prefix]`` alone, else ``[w1, p1, w2, p2, ...]``."""
    if len(prefixes) == 1:
        return [prefixes[0]]
    return [x for w, p in zip(shares, prefixes) for x in (round(w, 12), p)]


# ------------------------------------------------------------------------------------------------- in the job


def tokens_on_disk(prefix: str) -> int:
    """Tokens of a prepared prefix: its ``.stats.json`` (written by the tokenize stage) where there is one, else
    the ``.idx`` header (a prefix made by Megatron's own tool has no stats.json)."""
    stats = f"{prefix}.stats.json"
    if os.path.isfile(stats):
        with open(stats, encoding="utf-8") as f:
            return int(json.load(f)["tokens"])
    from launcher.preflight import RealFileSystem, read_idx

    return read_idx(RealFileSystem(), prefix + ".idx").num_tokens


def resolve_train_spec(spec: Any, read_tokens: Callable[[str], int | None] = tokens_on_disk) -> Any:
    """A TrainSpec whose ``train_data`` is Megatron's list for its ``blend``, token counts read where the plan
    left them open (JSONL inputs tokenized after planning, prefixes not looked at by a dry run). A spec whose
    ``train_data`` is already written is returned as it is: what the plan said is what trains."""
    if not spec.blend:
        return spec
    if spec.train_data:  # shares fixed by the plan: only fill in the tokens and epochs the job's log reports
        try:
            tokens = [p.tokens if p.tokens is not None else read_tokens(p.prefix) for p in spec.blend]
        except (OSError, ValueError, KeyError):  # information only: what trains is already decided
            return spec
        run_tokens = spec.max_steps * spec.parallelism.gbs * spec.seq_length
        shares = [p.share for p in spec.blend]
        if None in shares or None in tokens:
            return spec
        reps = epochs(shares, tokens, run_tokens)
        return replace(spec, blend=[replace(p, tokens=t, epochs=round(e, 3) if e is not None else None)
                                    for p, t, e in zip(spec.blend, tokens, reps)])
    tokens = [p.tokens if p.tokens is not None else read_tokens(p.prefix) for p in spec.blend]
    shares = resolve_weights([p.weight for p in spec.blend], tokens, [p.prefix for p in spec.blend])
    run_tokens = spec.max_steps * spec.parallelism.gbs * spec.seq_length
    reps = epochs(shares, tokens, run_tokens)
    blend = [replace(p, tokens=t, share=round(s, 6), epochs=round(e, 3) if e is not None else None)
             for p, t, s, e in zip(spec.blend, tokens, shares, reps)]
    return replace(spec, blend=blend, train_data=megatron_prefix_list(shares, [p.prefix for p in blend]))


def mix_summary(spec: Any) -> list[str]:
    """One line per part of a resolved blend, for the job's log."""
    return [f"{p.prefix}: share {p.share if p.share is not None else '?'}, "
            f"{p.tokens if p.tokens is not None else '?'} tokens, "
            f"{p.epochs if p.epochs is not None else '?'} epochs" for p in spec.blend]
