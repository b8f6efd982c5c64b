"""Token-level perplexity: exp(mean negative log-likelihood over every predicted token of every document).

A document longer than ``max_length`` is split into windows of at most ``max_length`` tokens that overlap by one
token, so that each token after a document's first is predicted exactly once (a document of n tokens predicts
n - 1), and a window's first token is the last one of the window before: the context is cut at window borders,
which raises perplexity a little for long documents, the same way for both models.
Windows are batched (right-padded, the padding masked out of attention and loss), longest first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from launcher.evaluate.progress import progress


@dataclass(frozen=True)
class Perplexity:
    ppl: float
    nll_sum: float  # natural log, summed over the predicted tokens
    tokens: int  # predicted tokens (each document: its length - 1)
    documents: int
    windows: int

    def to_json(self) -> dict[str, Any]:
        return {"ppl": self.ppl, "nll_sum": self.nll_sum, "tokens": self.tokens, "documents": self.documents,
                "windows": self.windows}


def windows(ids: list[int], max_length: int) -> list[list[int]]:
    """Windows of at most ``max_length`` tokens overlapping by one; [] for a document with nothing to predict."""
    if max_length < 2:
        raise ValueError(f"max_length={max_length}: must be >= 2 (one token of context, one predicted)")
    if len(ids) < 2:
        return []
    step = max_length - 1
    return [ids[s:s + max_length] for s in range(0, len(ids) - 1, step)]


def _batch_nll(model: Any, batch: list[list[int]], device: Any) -> float:
    """Summed NLL of one right-padded batch of windows (fp32 log-softmax whatever the model's dtype)."""
    import torch

    width = max(len(w) for w in batch)
    ids = torch.zeros((len(batch), width), dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, w in enumerate(batch):
        ids[i, :len(w)] = torch.tensor(w, dtype=torch.long)
        mask[i, :len(w)] = 1
    ids, mask = ids.to(device), mask.to(device)
    with torch.inference_mode():
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
    total = 0.0
    for i, w in enumerate(batch):  # row by row: a full fp32 copy of the batch's logits can be many GiB
        logp = torch.log_softmax(logits[i, :len(w) - 1].float(), dim=-1)
        target = ids[i, 1:len(w)]
        total -= float(logp.gather(1, target.unsqueeze(1)).sum(dtype=torch.float64))
    return total


def perplexity(model: Any, docs: list[list[int]], *, max_length: int, batch_size: int, device: Any,
               desc: str = "ppl", quiet: bool = False) -> Perplexity:
    """Perplexity of ``model`` over ``docs`` (token ids); raises when no document has two tokens."""
    vocab = int(model.config.vocab_size)
    wins = [w for d in docs for w in windows(d, max_length)]
    too_big = max((max(w) for w in wins), default=0)
    if too_big >= vocab:
        raise ValueError(f"{desc}: token id {too_big} >= the model's vocab_size {vocab}: the data was tokenized "
                         "with another tokenizer")
    if not wins:
        raise ValueError(f"{desc}: no document with at least two tokens")
    wins.sort(key=len, reverse=True)
    batches = [wins[i:i + batch_size] for i in range(0, len(wins), batch_size)]
    nll = 0.0
    for b in progress(batches, len(batches), desc, quiet):
        nll += _batch_nll(model, b, device)
    tokens = sum(len(w) - 1 for w in wins)
    return Perplexity(ppl=math.exp(nll / tokens), nll_sum=nll, tokens=tokens,
                      documents=sum(1 for d in docs if len(d) >= 2), windows=len(wins))
