"""Attention through ``torch.nn.functional.scaled_dot_product_attention`` for machines without Transformer Engine.

Real NGC containers have Transformer Engine (TE) and keep it (``attention="te"``). Where TE is missing (the H200
test machine, CPU CI) megatron-core's *local* layer spec works, but its ``DotProductAttention`` materialises the
s x s score matrix (8192^2 x heads per layer): slow and memory-hungry. Here the core attention is replaced by one
that calls PyTorch's SDPA with ``is_causal=True`` (flash / memory-efficient kernels), and

* ``sdpa_layer_spec(config)`` is megatron-core's local GPT layer spec with that core attention;
* ``sdpa_forward_step(model, batch)`` replaces NeMo's ``gpt_forward_step``, which asserts that TE is present when a
  batch carries no ``attention_mask``. A causal SDPA needs no mask, so this passes ``attention_mask=None``
  explicitly (and the data module is told not to build the 8192 x 8192 mask per sample; see ``recipes.cpt``).

Only causal self-attention without packing, context parallelism or attention bias is supported; anything else fails
loudly at construction rather than computing the wrong thing.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
import torch.nn.functional as F
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_config import TransformerConfig
from megatron.core.utils import divide


class SDPACoreAttention(MegatronModule):
    """Drop-in for megatron-core's local ``DotProductAttention`` (same constructor and forward signature)."""

    def __init__(
        self,
        config: TransformerConfig,
        layer_number: int,
        attn_mask_type: AttnMaskType,
        attention_type: str,
        attention_dropout: Optional[float] = None,
        softmax_scale: Optional[float] = None,
        cp_comm_type: Optional[str] = None,
        pg_collection: Any = None,
    ):
        super().__init__(config=config)
        if config.context_parallel_size != 1:
            raise ValueError("SDPA attention does not implement context parallelism (cp>1 needs attention='te')")
        if attn_mask_type not in (AttnMaskType.causal, AttnMaskType.padding_causal):
            raise ValueError(f"SDPA attention here is causal only, got attn_mask_type={attn_mask_type}")
        if getattr(config, "softmax_type", "vanilla") != "vanilla":
            raise ValueError("SDPA attention supports softmax_type='vanilla' only")
        if pg_collection is not None and hasattr(pg_collection, "tp"):
            tp = pg_collection.tp.size()
        else:
            from megatron.core import parallel_state

            tp = parallel_state.get_tensor_model_parallel_world_size()
        self.layer_number = max(1, layer_number)
        self.attn_mask_type = attn_mask_type
        projection_size = config.kv_channels * config.num_attention_heads
        self.hidden_size_per_partition = divide(projection_size, tp)
        self.num_heads = divide(config.num_attention_heads, tp)
        self.num_groups = divide(config.num_query_groups or config.num_attention_heads, tp)
        head_dim = divide(projection_size, config.num_attention_heads)
        self.softmax_scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(head_dim)
        self.dropout_p = config.attention_dropout if attention_dropout is None else attention_dropout

    def forward(
        self,
        query: torch.Tensor,  # [sq, b, np, hn]
        key: torch.Tensor,  # [sk, b, ng, hn]
        value: torch.Tensor,  # [sk, b, ng, hn]
        attention_mask: Optional[torch.Tensor],
        attn_mask_type: Optional[AttnMaskType] = None,
        attention_bias: Optional[torch.Tensor] = None,
        packed_seq_params: Any = None,
    ) -> torch.Tensor:
        if packed_seq_params is not None:
            raise ValueError("packed sequences need attention='te'")
        if attention_bias is not None:
            raise ValueError("attention bias is not supported by the SDPA attention")
        # The causal mask is implied (is_causal=True); a dense causal attention_mask, if a data module still
        # sends one, carries no extra information for unpacked causal LM batches and is ignored.
        sq, b = query.shape[0], query.shape[1]
        q = query.permute(1, 2, 0, 3)  # [b, np, sq, hn]
        k = key.permute(1, 2, 0, 3)
        v = value.permute(1, 2, 0, 3)
        gqa = self.num_heads != self.num_groups
        out = F.scaled_dot_product_attention(
            q, k, v,
            dropout_p=self.dropout_p if self.training else 0.0,
            is_causal=True,
            scale=self.softmax_scale,
            enable_gqa=gqa,
        )  # [b, np, sq, hn]
        return out.permute(2, 0, 1, 3).reshape(sq, b, self.hidden_size_per_partition)


def sdpa_layer_spec(config: Any) -> Any:
    """megatron-core's local (no-TE) GPT layer spec with ``SDPACoreAttention`` as the core attention."""
    from megatron.core.models.gpt import gpt_layer_specs

    spec = gpt_layer_specs.get_gpt_layer_local_spec(
        num_experts=config.num_moe_experts,
        moe_grouped_gemm=config.moe_grouped_gemm,
        qk_layernorm=config.qk_layernorm,
        normalization=config.normalization,
    )
    spec.submodules.self_attention.submodules.core_attention = SDPACoreAttention
    return spec


def sdpa_forward_step(model: Any, batch: dict[str, Any]) -> torch.Tensor:
    """NeMo's ``gpt_forward_step`` without the TE assertion: causal SDPA needs no attention mask."""
    if "cu_seqlens" in batch:
        raise ValueError("packed sequences need attention='te'")
    return model(
        input_ids=batch["tokens"],
        position_ids=batch["position_ids"],
        labels=batch["labels"],
        attention_mask=None,
    )


def te_available() -> bool:
    """Transformer Engine importable (what attention='auto' decides on, at job time)."""
    try:
        import transformer_engine  # noqa: F401
        import transformer_engine.pytorch  # noqa: F401
    except Exception:
        return False
    return True
