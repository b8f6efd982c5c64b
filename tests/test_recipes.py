"""The NeMo 2 recipes built from JobSpecs: every CPT value in the built config equals the spec.

Needs nemo_toolkit 2.7.x (the ``[nemo]`` extra) but no GPU: recipes are built as NeMo-Run configs, and the parts
that construct without CUDA (model, data with the real tokenizer, optimizer, logger, resume, strategy) are built.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

pytestmark = pytest.mark.nemo
llm = pytest.importorskip("nemo.collections.llm", reason="needs nemo_toolkit 2.7.x: pip install -e '.[nemo]'")

import fiddle as fdl  # noqa: E402
import torch  # noqa: E402

from launcher.errors import ConfigError  # noqa: E402
from launcher.jobspec import ConvertSpec, ExportSpec, JobSpec, Optim, Parallelism, TrainSpec  # noqa: E402
from recipes import cpt  # noqa: E402
from recipes.entry import main as entry_main  # noqa: E402
from recipes.sdpa import SDPACoreAttention, sdpa_forward_step, sdpa_layer_spec  # noqa: E402

DATA = ["0.7", "/data/ja/wiki_text_document", "0.3", "/data/ja/cc_text_document"]


def _spec(**kw: Any) -> TrainSpec:
    base = dict(
        train_data=DATA, valid_data=["/data/ja/valid_text_document"], test_data=["/data/ja/test_text_document"],
        tokenizer_dir="/models/Llama-3.1-8B", base_checkpoint="/models/llama31_8b_nemo",
        checkpoint_dir="/runs/cpt/checkpoints", log_dir="/runs/cpt/logs", run_name="cpt",
    )
    base.update(kw)
    return TrainSpec(**base)  # type: ignore[arg-type]


SPECS = {
    # 4 DGX H100 nodes: TP2 x PP2 x CP2 x DP4 = 32 GPUs, Transformer Engine (CP needs it)
    "dgx-h100-4node": _spec(num_nodes=4, gpus_per_node=8, attention="te", max_steps=150,
                            parallelism=Parallelism(tp=2, pp=2, cp=2, dp=4, mbs=1, gbs=1024, sequence_parallel=True)),
    # the 48 GB workstation: one GPU, full recompute, optimizer state on the host, bf16 grads
    "workstation-offload": _spec(num_nodes=1, gpus_per_node=1, attention="sdpa", recompute="full",
                                 optimizer_offload=True, offload_fraction=1.0, grad_reduce_in_fp32=False,
                                 parallelism=Parallelism(tp=1, pp=1, cp=1, dp=1, mbs=1, gbs=64)),
    # one 8-GPU node, data parallel
    "single-node": _spec(num_nodes=1, gpus_per_node=8, attention="sdpa", recompute="selective", wandb_project="cpt",
                         parallelism=Parallelism(tp=1, pp=1, cp=1, dp=8, mbs=1, gbs=128)),
}


@pytest.mark.parametrize("name", list(SPECS))
def test_built_recipe_equals_spec(name: str) -> None:
    spec = SPECS[name]
    attention = cpt.resolve_attention(spec)
    r = cpt.train_recipe(spec, attention)
    bad = [c for c in cpt.train_recipe_checks(r, spec, attention) if not c.ok]
    assert not bad, bad
    # the values the issue names, read straight from the config (not only through the check table)
    p = spec.parallelism
    st = r.trainer.strategy
    assert (st.tensor_model_parallel_size, st.pipeline_model_parallel_size, st.context_parallel_size) == (p.tp, p.pp, p.cp)
    assert r.trainer.num_nodes * r.trainer.devices == p.world_size
    assert (r.data.global_batch_size, r.data.micro_batch_size, r.data.seq_length) == (p.gbs, p.mbs, spec.seq_length)
    assert r.data.paths == {"train": DATA, "validation": spec.valid_data, "test": spec.test_data}
    assert r.data.split is None  # never the 900,50,50 default
    assert r.data.tokenizer.pretrained_model_name == spec.tokenizer_dir
    assert r.optim.config.lr == 2.5e-5 and r.optim.lr_scheduler.min_lr == 2.5e-6
    assert r.optim.lr_scheduler.warmup_steps == 15 and r.optim.lr_scheduler.max_steps == spec.max_steps
    assert (r.optim.config.adam_beta1, r.optim.config.adam_beta2, r.optim.config.weight_decay) == (0.9, 0.95, 0.1)
    assert r.optim.config.clip_grad == 1.0 and r.optim.config.bf16
    assert r.resume.resume_if_exists and r.resume.resume_ignore_no_checkpoint
    assert r.resume.restore_config.path == spec.base_checkpoint
    assert r.resume.restore_config.load_artifacts is False  # our tokenizer, not the checkpoint's
    assert r.resume.resume_from_directory == spec.checkpoint_dir == r.log.ckpt.dirpath
    assert r.log.ckpt.every_n_train_steps == spec.ckpt_every_n_steps
    assert r.trainer.plugins.precision == "bf16-mixed"


def test_recipe_defaults_are_not_the_pretraining_ones() -> None:
    r = cpt.train_recipe(SPECS["single-node"], "sdpa")
    from nemo.collections.llm.gpt.data.pre_training import PreTrainingDataModule

    assert issubclass(r.data.__fn_or_cls__, PreTrainingDataModule)  # not MockDataModule
    assert r.trainer.strategy.context_parallel_size == 1  # the recipe's default is 2
    assert r.data.global_batch_size == 128  # not 512
    assert r.optim.config.lr == 2.5e-5  # not 3e-4


def test_workstation_offload_builds_the_fp32_state_on_the_host() -> None:
    r = cpt.train_recipe(SPECS["workstation-offload"], "sdpa")
    oc = r.optim.config
    assert oc.optimizer_cpu_offload and oc.optimizer_offload_fraction == 1.0
    assert oc.use_precision_aware_optimizer  # the mechanism: no fp32 copy of the params on the GPU
    assert r.model.config.recompute_granularity == "full" and r.model.config.recompute_num_layers == 1
    assert r.trainer.strategy.ddp.grad_reduce_in_fp32 is False


def test_sdpa_attention_is_wired_and_te_is_left_alone() -> None:
    sd = cpt.train_recipe(SPECS["single-node"], "sdpa").model.config
    assert sd.transformer_layer_spec is sdpa_layer_spec and sd.forward_step_fn is sdpa_forward_step
    assert not (sd.apply_rope_fusion or sd.masked_softmax_fusion or sd.gradient_accumulation_fusion)
    te = cpt.train_recipe(SPECS["dgx-h100-4node"], "te").model.config
    assert "transformer_layer_spec" not in te.__arguments__  # NeMo's default (the TE spec where TE exists)


def test_random_init_has_no_restore_config() -> None:
    r = cpt.train_recipe(_spec(base_checkpoint="", random_init=True, gpus_per_node=1,
                               parallelism=Parallelism(gbs=8)), "sdpa")
    assert r.resume.restore_config is None and r.resume.resume_if_exists


def test_bad_specs_report_every_problem() -> None:
    spec = _spec(num_nodes=1, gpus_per_node=8, attention="sdpa", valid_data=[], base_checkpoint="",
                 parallelism=Parallelism(tp=3, pp=1, cp=2, dp=1, gbs=10, mbs=4))
    with pytest.raises(ConfigError) as e:
        cpt.train_recipe(spec, "sdpa")
    where = {p.where for p in e.value.problems}
    assert {"jobspec train.parallelism", "jobspec train.parallelism.tp", "jobspec train.attention",
            "jobspec train.valid_data", "jobspec train.base_checkpoint", "jobspec train.parallelism.gbs"} <= where


def test_parts_build_without_cuda_with_the_real_tokenizer(llama31_tokenizer_dir: Path,
                                                         japanese_token_prefix: str, tmp_path: Path) -> None:
    spec = _spec(gpus_per_node=1, attention="sdpa", parallelism=Parallelism(gbs=8), num_layers=2,
                 train_data=[japanese_token_prefix], valid_data=[japanese_token_prefix],
                 test_data=[japanese_token_prefix], tokenizer_dir=str(llama31_tokenizer_dir),
                 base_checkpoint="", random_init=True, checkpoint_dir=str(tmp_path / "ck"), log_dir=str(tmp_path / "log"))
    r = cpt.train_recipe(spec, "sdpa")
    data = fdl.build(r.data)
    assert data.tokenizer.vocab_size == 128256  # Llama-3.1, not the GPT-2 fallback (50257)
    assert data.tokenizer.tokenizer("Hello world!").input_ids == [128000, 9906, 1917, 0]
    model = fdl.build(r.model)
    assert model.config.num_layers == 2 and model.config.seq_length == 8192
    st = fdl.build(r.trainer.strategy)
    assert st.tensor_model_parallel_size == 1
    resume = fdl.build(r.resume)
    assert resume.resume_if_exists and resume.restore_config is None


def test_convert_and_export_recipes() -> None:
    c = cpt.convert_recipe(ConvertSpec(hf_model_dir="/models/Llama-3.1-8B", output_path="/models/llama31_8b_nemo"))
    assert c.__fn_or_cls__ is llm.import_ckpt
    assert (c.source, c.output_path) == ("hf:///models/Llama-3.1-8B", "/models/llama31_8b_nemo")
    assert c.model.config.__fn_or_cls__.__name__ == "Llama31Config8B"
    e = cpt.export_recipe(ExportSpec(checkpoint_dir="/runs/cpt/checkpoints", output_path="/out/hf"),
                          checkpoint="/runs/cpt/checkpoints/cpt--step=149-consumed_samples=153600.0-last")
    assert e.__fn_or_cls__ is llm.export_ckpt and e.target == "hf" and e.path.endswith("-last")
    with pytest.raises(ConfigError):
        cpt.convert_recipe(ConvertSpec())


def test_entry_validate_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    js = tmp_path / "jobspec.json"
    js.write_text(JobSpec(SPECS["single-node"], ConvertSpec(), ExportSpec()).to_json())
    assert entry_main(["train", "--jobspec", str(js), "--validate-only"]) == 0
    assert "BAD" not in capsys.readouterr().out
    bad = json.loads(js.read_text())
    bad["train"]["parallelism"]["dp"] = 3
    js.write_text(json.dumps(bad))
    assert entry_main(["train", "--jobspec", str(js), "--validate-only"]) == 2


def test_sdpa_core_attention_matches_causal_softmax() -> None:
    from megatron.core.transformer.enums import AttnMaskType
    from megatron.core.transformer.transformer_config import TransformerConfig

    torch.manual_seed(0)
    cfg = TransformerConfig(num_layers=1, hidden_size=64, num_attention_heads=4, num_query_groups=2, kv_channels=16)
    tp1 = SimpleNamespace(tp=SimpleNamespace(size=lambda: 1))
    att = SDPACoreAttention(cfg, 1, AttnMaskType.causal, "self", pg_collection=tp1).eval()
    s, b = 12, 2
    q = torch.randn(s, b, 4, 16)
    k = torch.randn(s, b, 2, 16)
    v = torch.randn(s, b, 2, 16)
    out = att(q, k, v, None)
    assert out.shape == (s, b, 64)
    kk, vv = k.repeat_interleave(2, dim=2), v.repeat_interleave(2, dim=2)
    scores = torch.einsum("sbnh,tbnh->bnst", q, kk) / math.sqrt(16)
    scores = scores.masked_fill(torch.triu(torch.ones(s, s, dtype=torch.bool), 1), float("-inf"))
    ref = torch.einsum("bnst,tbnh->sbnh", scores.softmax(-1), vv).reshape(s, b, 64)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_sdpa_forward_step_passes_no_mask() -> None:
    seen: dict[str, Any] = {}

    def model(**kw: Any) -> str:
        seen.update(kw)
        return "out"

    batch = {"tokens": 1, "position_ids": 2, "labels": 3, "attention_mask": "ignored"}
    assert sdpa_forward_step(model, batch) == "out"
    assert seen == {"input_ids": 1, "position_ids": 2, "labels": 3, "attention_mask": None}


def test_jobspec_roundtrip_with_added_fields() -> None:
    spec = dataclasses.replace(SPECS["workstation-offload"], random_init=False, ckpt_keep=3, gpu_memory_cap_gib=47.0,
                               ckpt_async_save=False, optim=Optim())
    js = JobSpec(spec, ConvertSpec(), ExportSpec())
    assert JobSpec.from_json(js.to_json()) == js


def test_fresh_torch_adamw_state_dict_is_templated_for_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    """The no-TE/no-apex resume fix: a fresh torch AdamW has no per-param 'step' to collect (megatron asserted)."""
    import megatron.core.optimizer as mopt
    import megatron.core.optimizer.optimizer_config as moc
    from megatron.core.optimizer import distrib_optimizer as mdo

    DO = mdo.DistributedOptimizer
    for obj, name in [(DO, "state_dict"), (DO, "_get_main_param_and_optimizer_states"),
                      (DO, "_set_main_param_and_optimizer_states"), (moc, "is_te_min_version"),
                      (mopt, "is_te_min_version")]:
        monkeypatch.setattr(obj, name, getattr(obj, name))  # restored after the test
    monkeypatch.setattr(mdo, "HAVE_APEX_OR_TE", False)
    monkeypatch.setattr("recipes.sdpa.te_available", lambda: False)
    from recipes.entry import _patch_megatron_without_te

    assert len(_patch_megatron_without_te()) == 2
    p = torch.nn.Parameter(torch.zeros(4))
    fake = SimpleNamespace(optimizer=torch.optim.AdamW([p], lr=0.1), grad_scaler=None)
    sd = DO.state_dict(fake)
    assert sd["optimizer"]["param_groups"][0]["step"] == 0 and "params" not in sd["optimizer"]["param_groups"][0]
    p.grad = torch.ones(4)
    fake.optimizer.step()
    assert DO.state_dict(fake)["optimizer"]["param_groups"][0]["step"] == 1.0  # megatron's own path once stepped
