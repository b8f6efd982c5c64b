"""NeMo's HF Llama importer and exporter where Transformer Engine is missing (the H200 test machine, CPU CI).

NGC containers have TE and need none of this. Without TE two things break in nemo_toolkit 2.7.3:

* ``HFLlamaImporter.config`` builds a ``Llama31Config`` that asks for TE's fused RoPE (``apply_rope_fusion``):
  megatron-core refuses it (``apply_rope_fusion is not available. Please install TE >= 1.4``). Here the config is
  built with the TE/apex fusions off and megatron-core's local layers with SDPA attention (``recipes.sdpa``), the
  model the train stage trains.
* Both connectors map the layer norms by TE's fused names (``self_attention.linear_qkv.layer_norm_weight``,
  ``mlp.linear_fc1.layer_norm_weight``); the local layers call them ``input_layernorm.weight`` and
  ``pre_mlp_layernorm.weight``. Here the mappings are renamed on the way into ``io.apply_transforms``. On disk
  nothing differs: the local spec's ``sharded_state_dict_keys_map`` writes the TE names, so a checkpoint
  converted here loads in a TE container and the other way round.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any, Iterator

from recipes.sdpa import te_available

# TE's fused layer-norm names -> megatron-core local layer names
LOCAL_NAMES = {
    "self_attention.linear_qkv.layer_norm_weight": "input_layernorm.weight",
    "mlp.linear_fc1.layer_norm_weight": "pre_mlp_layernorm.weight",
}
NO_TE_CONFIG = {
    "apply_rope_fusion": False,
    "masked_softmax_fusion": False,
    "gradient_accumulation_fusion": False,
    "persist_layer_norm": False,
}


def local_name(key: Any) -> Any:
    """A mapping key (a name, a tuple of names, or anything else) with TE's layer-norm names made local."""
    if isinstance(key, tuple):
        return tuple(local_name(k) for k in key)
    if isinstance(key, str):
        for te, local in LOCAL_NAMES.items():
            key = key.replace(te, local)
    return key


def _norms_to_model_dtype(*modules: Any) -> None:
    """The local spec's RMSNorms (torch.nn.RMSNorm) are created in fp32 whatever ``params_dtype`` says; TE's are
    bf16 like the rest. ``apply_transforms`` refuses to change a parameter's dtype, so bring every floating-point
    parameter of both sides to the target's own dtype (the one most of its parameters have; bf16 here). Training
    casts the whole model to bf16 as well (megatron's Float16Module)."""
    import collections

    import torch

    counts = collections.Counter(p.dtype for p in modules[-1].parameters() if p.is_floating_point())
    if not counts:
        return
    dtype = counts.most_common(1)[0][0]
    with torch.no_grad():
        for m in modules:
            for p in m.parameters() if isinstance(m, torch.nn.Module) else ():
                if p.is_floating_point() and p.dtype != dtype:
                    p.data = p.data.to(dtype)


@contextlib.contextmanager
def cpu_only_saves() -> Iterator[None]:
    """convert and export are CPU stages (``CUDA_VISIBLE_DEVICES=""``), but megatron-core's checkpoint writer
    (``filesystem_async.preload_tensors``) calls ``torch.cuda.synchronize()``, which raises where no GPU is visible.
    With no GPU there is nothing to synchronize: a no-op for the stage. Its status flags (CUDA tensors) go on the
    CPU. Seen on CPU here; the data written is the same either way."""
    import nemo.lightning.io.pl as nemo_pl
    import torch
    from nemo.lightning.io.connector import ModelConnector

    # The importer's own trainer saves asynchronously by default (MegatronStrategy ckpt_async_save=True); the async
    # path keeps its bookkeeping in CUDA tensors (async_utils.sync_all_async_calls). One save, nothing to overlap:
    # save synchronously.
    orig_setup = ModelConnector.nemo_setup

    def sync_setup(self: Any, model: Any, trainer: Any = None, *args: Any, **kwargs: Any) -> Any:
        if trainer is None:
            kwargs.setdefault("ckpt_async_save", False)
        return orig_setup(self, model, trainer, *args, **kwargs)

    orig_sync, orig_device, orig_stream = torch.cuda.synchronize, torch.cuda.current_device, torch.cuda.Stream
    orig_fix = nemo_pl._fix_tensors_device
    ModelConnector.nemo_setup = sync_setup  # type: ignore[method-assign]
    if not torch.cuda.is_available():
        torch.cuda.synchronize = lambda device=None: None  # type: ignore[assignment]
        # the writer's success/failure flags are tensors on torch.cuda.current_device(), broadcast over the
        # (gloo, on CPU) process group; with no GPU they live on the CPU
        torch.cuda.current_device = lambda: torch.device("cpu")  # type: ignore[assignment,return-value]
        # export's loader wraps DDP setup in torch.cuda.stream(torch.cuda.Stream()); stream(None) is a no-op
        torch.cuda.Stream = lambda *a, **k: None  # type: ignore[assignment,misc]
        # and after loading moves tensors to "the" CUDA device, asserting CUDA is initialised: nothing to move
        nemo_pl._fix_tensors_device = lambda ckpt: ckpt
    try:
        yield
    finally:
        torch.cuda.synchronize, torch.cuda.current_device = orig_sync, orig_device  # type: ignore[assignment]
        torch.cuda.Stream = orig_stream  # type: ignore[misc]
        nemo_pl._fix_tensors_device = orig_fix
        ModelConnector.nemo_setup = orig_setup  # type: ignore[method-assign]


@contextlib.contextmanager
def hf_connectors_without_te() -> Iterator[None]:
    """Inside it, ``llm.import_ckpt`` / ``llm.export_ckpt`` of Llama models work without TE (no-op with TE)."""
    if te_available():
        yield
        return
    import nemo.lightning.io as nio
    from nemo.collections.llm.gpt.model import llama

    from recipes.sdpa import sdpa_layer_spec

    orig_apply = nio.apply_transforms
    orig_config = llama.HFLlamaImporter.config

    def apply_local(source: Any, target: Any, mapping: dict[str, str], transforms: Any = (), **kw: Any) -> Any:
        _norms_to_model_dtype(source, target)
        mapping = {local_name(k): local_name(v) for k, v in mapping.items()}
        for t in transforms or ():
            for attr in ("source_key", "target_key"):
                if hasattr(t, attr):
                    setattr(t, attr, local_name(getattr(t, attr)))
        return orig_apply(source, target, mapping=mapping, transforms=list(transforms or ()), **kw)

    def config_without_te(self: Any) -> Any:
        # the property builds Llama31Config / LlamaConfig by their module names: swap them for the call only (the
        # checkpoint's context must name the real classes)
        classes = {name: getattr(llama, name) for name in ("Llama31Config", "LlamaConfig")}
        for name, cls in classes.items():
            setattr(llama, name, functools.partial(cls, transformer_layer_spec=sdpa_layer_spec, **NO_TE_CONFIG))
        try:
            return orig_config.fget(self)
        finally:
            for name, cls in classes.items():
                setattr(llama, name, cls)

    nio.apply_transforms = apply_local
    llama.HFLlamaImporter.config = property(config_without_te)  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        nio.apply_transforms = orig_apply
        llama.HFLlamaImporter.config = orig_config  # type: ignore[method-assign]
