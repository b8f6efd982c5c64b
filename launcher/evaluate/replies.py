"""Greedy replies to a fixed set of Japanese instructions, and which of them are mainly Japanese.

The prompt format: the tokenizer's chat template when it has one (an Instruct model), else -- base models, and
a CPT model exported from one, have none -- the plain Alpaca-style Japanese format below (the one the
harness's ``japanese_leaderboard`` uses). Both models of a comparison get the same format when both lack a
template; each model's entry in the JSON says which it got. With the plain format a base model tends to go on
with another "### 指示" block: the reply is cut there.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from launcher.evaluate.data import EvalInputError
from launcher.evaluate.progress import progress
from launcher.evaluate.script import count_script

DEFAULT_PROMPTS = Path(__file__).resolve().parent / "prompts_ja.jsonl"
PLAIN_FORMAT = "以下は、タスクを説明する指示です。要求を適切に満たす応答を書きなさい。\n\n### 指示：\n{prompt}\n\n### 応答：\n"
PLAIN_STOP = "\n### "


@dataclass(frozen=True)
class Prompt:
    id: str
    prompt: str


def load_prompts(path: str | os.PathLike[str] = DEFAULT_PROMPTS) -> list[Prompt]:
    """JSONL, one ``{"id": ..., "prompt": ...}`` per line (``id`` optional); a plain text file: one per line."""
    p = Path(path)
    try:
        lines = [ln for ln in p.read_text(encoding="utf-8").splitlines() if ln.strip()]
    except OSError as e:
        raise EvalInputError(f"--prompts {path}: cannot read it ({e.strerror})") from None
    out: list[Prompt] = []
    for n, ln in enumerate(lines, 1):
        if p.suffix == ".jsonl":
            try:
                d = json.loads(ln)
                out.append(Prompt(str(d.get("id", f"{n}")), str(d["prompt"])))
            except (ValueError, KeyError, AttributeError) as e:
                raise EvalInputError(f"{path}:{n}: expected a JSON object with a 'prompt' field ({e})") from None
        else:
            out.append(Prompt(str(n), ln))
    if not out:
        raise EvalInputError(f"--prompts {path}: no prompts in it")
    return out


def prompt_format(tokenizer: Any) -> str:
    """"chat_template" when the tokenizer has one, else "plain"."""
    return "chat_template" if getattr(tokenizer, "chat_template", None) else "plain"


def render_prompt(tokenizer: Any, prompt: str) -> tuple[str, bool]:
    """(text, add_special_tokens): a chat template writes its own BOS, the plain format gets the tokenizer's."""
    if prompt_format(tokenizer) == "chat_template":
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
        return str(text), False
    return PLAIN_FORMAT.format(prompt=prompt), True


def _clean(reply: str, fmt: str) -> str:
    if fmt == "plain":
        reply = reply.split(PLAIN_STOP, 1)[0]
    return reply.strip()


def generate_replies(model: Any, tokenizer: Any, prompts: list[Prompt], *, max_new_tokens: int, batch_size: int,
                     device: Any, desc: str = "replies", quiet: bool = False) -> list[dict[str, Any]]:
    """Greedy replies (at most ``max_new_tokens`` new tokens each), batched with left padding."""
    import torch

    fmt = prompt_format(tokenizer)
    tokenizer.padding_side = "left"  # generation continues at the right end of every row
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    rendered = [render_prompt(tokenizer, p.prompt) for p in prompts]
    batches = [list(range(i, min(i + batch_size, len(prompts)))) for i in range(0, len(prompts), batch_size)]
    out: list[dict[str, Any]] = []
    for b in progress(batches, len(batches), desc, quiet):
        enc = [tokenizer(rendered[i][0], add_special_tokens=rendered[i][1])["input_ids"] for i in b]
        width = max(len(e) for e in enc)
        ids = torch.full((len(b), width), pad, dtype=torch.long)
        mask = torch.zeros((len(b), width), dtype=torch.long)
        for r, e in enumerate(enc):
            ids[r, width - len(e):] = torch.tensor(e, dtype=torch.long)
            mask[r, width - len(e):] = 1
        with torch.inference_mode():
            gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=False,
                                 num_beams=1, max_new_tokens=max_new_tokens, pad_token_id=pad,
                                 eos_token_id=tokenizer.eos_token_id, temperature=None, top_p=None, top_k=None)
        for r, i in enumerate(b):
            new = gen[r, width:].tolist()
            while new and new[-1] == pad:  # rows that ended early are padded after their EOS
                new.pop()
            reply = _clean(tokenizer.decode(new, skip_special_tokens=True), fmt)
            c = count_script(reply)
            out.append({"id": prompts[i].id, "prompt": prompts[i].prompt, "reply": reply,
                        "japanese": c.mainly_japanese, "japanese_chars": c.japanese, "latin_letters": c.latin,
                        "new_tokens": len(new)})
    return out
