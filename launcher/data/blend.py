"""A blend of prepared datasets: the weighted ``data_prefix`` list Megatron/NeMo training consumes.

``blend.json`` is exactly that list, e.g. ``[0.9, "/ds/ja_wiki_text_document", 0.1, "/ds/en_text_document"]``
(Megatron normalises the weights, so 9 and 1 mean the same). One ``cpt-launch tokenize ... --blend FILE
--weight W`` per dataset adds or replaces that dataset's entry, so a blend is built one dataset at a time.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

from launcher.data.indexed import IndexFormatError, read_index


class BlendError(ValueError):
    """A blend file or entry is invalid; the message names the file, the position and what is allowed."""


def _check_weight(weight: object, where: str) -> float:
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight <= 0:
        raise BlendError(f"{where}: weight {weight!r}; allowed: a positive finite number")
    return float(weight)


def read_blend(path: str | os.PathLike[str]) -> list[tuple[float, str]]:
    """Parse ``[w1, prefix1, w2, prefix2, ...]``; errors name the file and the position."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except ValueError as e:
        raise BlendError(f"{path}: not JSON ({e}); expected [weight, \"prefix\", ...]") from None
    if not isinstance(data, list) or len(data) % 2:
        raise BlendError(f"{path}: expected a flat list [weight, \"prefix\", ...] of even length")
    out = []
    for j in range(0, len(data), 2):
        w = _check_weight(data[j], f"{path}[{j}]")
        p = data[j + 1]
        if not isinstance(p, str) or not p:
            raise BlendError(f"{path}[{j + 1}]: {p!r}; allowed: a dataset prefix string like /ds/ja_text_document")
        out.append((w, p))
    return out


def write_blend(path: str | os.PathLike[str], entries: Sequence[tuple[float, str]], *, update: bool = True,
                check_exists: bool = True) -> list[object]:
    """Write (or, with ``update``, merge into) a blend file; return the flat list written.

    An entry whose prefix is already in the file replaces it in place; new ones are appended.
    With ``check_exists`` each prefix must be a complete ``.bin/.idx`` pair.
    """
    merged: list[tuple[float, str]] = read_blend(path) if update else []
    for n, (w, p) in enumerate(entries):
        w = _check_weight(w, f"blend entry {n} ({p})")
        p = str(p)
        if check_exists:
            try:
                read_index(p)
            except IndexFormatError as e:
                raise BlendError(f"blend entry {n}: {e}") from None
        for j, (_, q) in enumerate(merged):
            if q == p:
                merged[j] = (w, p)
                break
        else:
            merged.append((w, p))
    flat: list[object] = [x for w, p in merged for x in (w, p)]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(flat) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return flat
