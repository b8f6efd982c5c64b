"""Dimensions of the models a profile or ``--model`` may name.

Pure data: the planner and the memory model read these; the recipes map a name to NeMo's own config class.
Sources: the models' HF ``config.json`` files (Llama-3.1-8B, Llama-3.2-1B, Llama-3.1-70B).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelSpec:
    """Shape of a decoder-only Llama model."""

    name: str  # our short name, used in profiles and on the CLI
    hf_repo: str  # the Hugging Face repo the download stage fetches
    nemo_recipe: str  # the nemo.collections.llm recipe module (llm.<name>)
    num_layers: int
    hidden_size: int
    ffn_hidden_size: int
    num_attention_heads: int
    num_query_groups: int  # KV heads (GQA)
    vocab_size: int
    max_position_embeddings: int
    tied_embeddings: bool = False

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def num_params(self) -> int:
        """Parameter count (embeddings, attention, SwiGLU MLP, RMSNorms, output layer)."""
        h, f, L, v = self.hidden_size, self.ffn_hidden_size, self.num_layers, self.vocab_size
        kv = self.num_query_groups * self.head_dim
        attn = h * h + 2 * h * kv + h * h  # q, k, v, o
        mlp = 3 * h * f  # gate, up, down
        per_layer = attn + mlp + 2 * h
        emb = v * h
        out = 0 if self.tied_embeddings else v * h
        return L * per_layer + emb + out + h

    def flops_per_token(self, seq_length: int, causal: bool = True) -> float:
        """Training FLOPs per token: 6 x matmul params + attention (halved under the causal rule).

        The causal rule is the one NeMo >= 2025-08 and Megatron-Bridge use; for Llama-3.1-8B at seq 8192 it gives
        51.47 GFLOP/token (../shared/REFERENCE.md section 6).
        """
        h, f, L, v = self.hidden_size, self.ffn_hidden_size, self.num_layers, self.vocab_size
        kv = self.num_query_groups * self.head_dim
        matmul_params = L * (2 * h * h + 2 * h * kv + 3 * h * f) + v * h
        attn: float = 12 * L * h * seq_length  # QK^T and AV, fwd + bwd (x3), 2 FLOPs per MAC
        if causal:
            attn /= 2
        return 6 * matmul_params + attn


MODELS: dict[str, ModelSpec] = {
    m.name: m
    for m in (
        ModelSpec("llama3.1-8b", "meta-llama/Llama-3.1-8B", "llama31_8b", 32, 4096, 14336, 32, 8, 128256, 131072),
        ModelSpec("llama3.2-1b", "meta-llama/Llama-3.2-1B", "llama32_1b", 16, 2048, 8192, 32, 8, 128256, 131072,
                  tied_embeddings=True),
        ModelSpec("llama3.1-70b", "meta-llama/Llama-3.1-70B", "llama31_70b", 80, 8192, 28672, 64, 8, 128256, 131072),
    )
}


def get_model(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(sorted(MODELS))}") from None
