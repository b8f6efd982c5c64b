"""Plain-PyTorch baseline: HF ``LlamaForCausalLM`` (SDPA, pure bf16, fused AdamW), Llama-3.1-8B shape, random init.

The reference the NeMo recipe's throughput is held against (same GPU, same shape, same sequence length, same
tokens per optimizer step). No NeMo, no Megatron: transformers + torch only.

usage: python benchmarks/train/baseline_hf.py --layers 8 --seq 8192 --accum 8 --steps 6 [--data PREFIX]
Prints one JSON line per step and a summary (``RESULT {...}``); FLOPs by the causal rule
(launcher.models.ModelSpec.flops_per_token, scaled to the layer count).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from launcher.models import get_model  # noqa: E402


def batches(prefix: str | None, seq: int, vocab: int, seed: int = 0):
    """Token windows of seq+1 from a Megatron .bin (int32), or random ids when no data is given."""
    g = np.random.default_rng(seed)
    if prefix:
        toks = np.fromfile(prefix + ".bin", dtype=np.int32)
        while True:
            i = int(g.integers(0, len(toks) - seq - 1))
            yield torch.from_numpy(toks[i: i + seq + 1].astype(np.int64))
    while True:
        yield torch.from_numpy(g.integers(0, vocab, seq + 1))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--seq", type=int, default=8192)
    ap.add_argument("--accum", type=int, default=8, help="micro-batches (of 1 sequence) per optimizer step")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--data", default=None)
    a = ap.parse_args()

    from transformers import LlamaConfig, LlamaForCausalLM

    spec = replace(get_model("llama3.1-8b"), num_layers=a.layers)
    cfg = LlamaConfig(
        vocab_size=spec.vocab_size, hidden_size=spec.hidden_size, intermediate_size=spec.ffn_hidden_size,
        num_hidden_layers=a.layers, num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_query_groups, max_position_embeddings=spec.max_position_embeddings,
        rms_norm_eps=1e-5, rope_theta=500000.0, tie_word_embeddings=False,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 8192},
    )
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.gradient_checkpointing_disable()
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=2.5e-5, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
    fpt = spec.flops_per_token(a.seq, causal=True)
    it = batches(a.data, a.seq, spec.vocab_size)
    times, losses = [], []
    for step in range(a.warmup + a.steps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        tot = 0.0
        for _ in range(a.accum):
            x = next(it).cuda().unsqueeze(0)
            ids = x[:, : a.seq]
            out = model(input_ids=ids, labels=ids, use_cache=False)  # HF shifts the labels itself
            (out.loss / a.accum).backward()
            tot += float(out.loss.detach()) / a.accum
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        tps = a.accum * a.seq / dt
        rec = {"step": step, "loss": round(tot, 4), "step_time_s": round(dt, 4), "tokens_per_s": round(tps, 1),
               "tflops_causal": round(tps * fpt / 1e12, 1)}
        print("BASE " + json.dumps(rec), flush=True)
        if step >= a.warmup:
            times.append(dt)
            losses.append(tot)
    dt = sum(times) / len(times)
    tps = a.accum * a.seq / dt
    res = {"layers": a.layers, "seq": a.seq, "accum": a.accum, "mean_step_s": round(dt, 4),
           "tokens_per_s_per_gpu": round(tps, 1), "tflops_causal": round(tps * fpt / 1e12, 1),
           "gflop_per_token_causal": round(fpt / 1e9, 3),
           "max_alloc_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
           "max_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 2),
           "torch": torch.__version__}
    print("RESULT " + json.dumps(res), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
