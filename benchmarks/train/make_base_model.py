"""Write an HF Llama "base model" offline: a real shape the launcher knows, fewer layers, the real tokenizer.

Meta's weights are gated, so the GPU pipeline run starts from a model made here: ``LlamaForCausalLM`` with the
config of ``--model`` (launcher.models: hidden size, heads, KV groups, vocab 128,256, llama3 rope scaling, tied
embeddings for 3.2-1B) and ``--layers`` layers, saved with ``save_pretrained`` in bf16, next to the tokenizer files.

Random weights would give every model the same first loss (ln 128256 = 11.76), so a loaded base model could not be
told from a random one. ``--warmup-steps N`` first trains it for N plain-PyTorch AdamW steps on English text
(``--warmup-jsonl``), so the base model has a loss of its own, well below 11.76, which the CPT run's first step must
reproduce if convert and restore really loaded it.

usage: python make_base_model.py OUT --tokenizer DIR [--model llama3.2-1b] [--layers 4]
           [--warmup-jsonl en.jsonl --warmup-steps 60 --seq 2048 --batch 8] [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from launcher.models import get_model  # noqa: E402

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def hf_config(model_name: str, layers: int):  # type: ignore[no-untyped-def]
    from transformers import LlamaConfig

    m = get_model(model_name)
    return LlamaConfig(
        vocab_size=m.vocab_size, hidden_size=m.hidden_size, intermediate_size=m.ffn_hidden_size,
        num_hidden_layers=layers, num_attention_heads=m.num_attention_heads, num_key_value_heads=m.num_query_groups,
        head_dim=m.head_dim, max_position_embeddings=m.max_position_embeddings, rms_norm_eps=1e-5,
        rope_theta=500000.0, tie_word_embeddings=m.tied_embeddings, bos_token_id=128000, eos_token_id=128001,
        rope_scaling={"rope_type": "llama3", "factor": 32.0 if m.tied_embeddings else 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
        torch_dtype="bfloat16",
    )


def warmup(model, tok_dir: Path, jsonl: Path, steps: int, seq: int, batch: int, device: str) -> list[float]:  # type: ignore[no-untyped-def]
    """Plain next-token training on packed English text; returns the losses."""
    import torch
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    ids: list[int] = []
    for line in jsonl.read_text().splitlines():
        ids += tok.encode(json.loads(line)["text"]).ids + [128001]
    data = torch.tensor(ids, dtype=torch.long)
    n = (len(data) - 1) // seq
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.0)
    g = torch.Generator().manual_seed(0)
    losses = []
    model.train()
    for step in range(steps):
        rows = torch.randint(0, n, (batch,), generator=g)
        x = torch.stack([data[r * seq:(r + 1) * seq] for r in rows.tolist()]).to(device)
        out = model(input_ids=x, labels=x, use_cache=False)  # transformers shifts the labels itself
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(out.loss))
        if step % 10 == 0 or step == steps - 1:
            print(f"warmup step {step + 1}/{steps} loss {losses[-1]:.4f}", flush=True)
    model.eval()
    return losses


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--tokenizer", type=Path, required=True, help="directory with tokenizer.json (the real one)")
    ap.add_argument("--model", default="llama3.2-1b")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--warmup-jsonl", type=Path)
    ap.add_argument("--warmup-steps", type=int, default=0)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    import torch
    from transformers import LlamaForCausalLM

    if a.out.exists():
        print(f"error: {a.out} exists; not overwriting it", file=sys.stderr)
        return 2
    torch.manual_seed(a.seed)
    t0 = time.time()
    model = LlamaForCausalLM(hf_config(a.model, a.layers)).to(a.device)
    losses: list[float] = []
    if a.warmup_steps:
        if a.warmup_jsonl is None:
            print("error: --warmup-steps needs --warmup-jsonl", file=sys.stderr)
            return 2
        with torch.autocast(a.device.split(":")[0], dtype=torch.bfloat16):
            losses = warmup(model, a.tokenizer, a.warmup_jsonl, a.warmup_steps, a.seq, a.batch, a.device)
    tmp = a.out.with_name(a.out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.to(torch.bfloat16).save_pretrained(tmp)
    for f in TOKENIZER_FILES:
        shutil.copy(a.tokenizer / f, tmp / f)
    (tmp / "make_base_model.json").write_text(json.dumps(
        {"model": a.model, "layers": a.layers, "params": sum(p.numel() for p in model.parameters()),
         "warmup_steps": a.warmup_steps, "warmup_losses": losses, "seconds": round(time.time() - t0, 1)}, indent=1))
    tmp.rename(a.out)
    print(f"wrote {a.out}: {a.model} shape, {a.layers} layers, "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f} M params, {time.time() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
