"""Did convert load the base weights, and does the exported HF model hold the trained ones? Two losses, with HF.

1. The base HF model's loss on the run's first training batch must equal the first logged training step's loss
   (within 1 %): the loss NeMo reports at step 1 is computed before the first update, on the weights that convert
   wrote and train restored. (A model that did not load would start at ~ln(128256) = 11.76 instead.)
2. The exported HF model's loss on the validation batches NeMo validates on must equal the last validation loss
   in the step log (within 1 %).

The batches are NeMo's own: the JobSpec's train recipe builds its ``PreTrainingDataModule`` (same blend, seed,
sequence length, sample counts), whose datasets are indexed as NeMo's sampler does (sequentially, from 0; every
validation reads the same first ``limit_val_batches`` global batches). val_loss is the mean over those batches of
each batch's token-mean loss.

usage: python loss_proofs.py RUN_DIR --base-hf DIR --export-hf DIR [--json OUT] [--tol 0.01]
Runs where the training ran (GPU, NeMo importable); prints one JSON object; exit 1 if a proof fails.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def step_log(run_dir: Path) -> list[dict]:
    lines = []
    for line in (run_dir / "logs" / "train_steps.jsonl").read_text().splitlines():
        try:
            lines.append(json.loads(line))
        except ValueError:
            continue  # cut short by a kill -9
    return lines


def datasets(spec):  # type: ignore[no-untyped-def]
    import fiddle as fdl

    from recipes.cpt import resolve_attention, train_recipe

    t = spec.train
    dm = fdl.build(train_recipe(t, resolve_attention(t)).data)
    dm.create_attention_mask = False  # as recipes.entry does for SDPA (causal; no seq x seq mask per sample)
    dm.build(trainer_max_steps=t.max_steps, trainer_val_check_interval=t.val_check_interval,
             trainer_limit_val_batches=t.limit_val_batches, trainer_limit_test_batches=t.limit_val_batches)
    return dm._train_ds, dm._validation_ds


def mean_loss(model, ds, first: int, count: int, gbs: int) -> float:  # type: ignore[no-untyped-def]
    """Mean over global batches of each batch's token-mean loss (mbs 1: one sample per micro-batch)."""
    import torch

    per_batch = []
    with torch.no_grad():
        for b in range(count):
            tot, n = 0.0, 0
            for i in range(first + b * gbs, first + (b + 1) * gbs):
                s = ds[i]
                tokens = torch.as_tensor(s["tokens"]).long().cuda()[None]
                labels = torch.as_tensor(s["labels"]).long().cuda()[None]
                mask = torch.as_tensor(s["loss_mask"]).float().cuda()[None]
                logits = model(input_ids=tokens, use_cache=False).logits.float()
                ce = torch.nn.functional.cross_entropy(logits.view(-1, logits.size(-1)), labels.view(-1),
                                                       reduction="none")
                tot += float((ce * mask.view(-1)).sum())
                n += int(mask.sum())
            per_batch.append(tot / n)
    return sum(per_batch) / len(per_batch)


def hf_model(path: str):  # type: ignore[no-untyped-def]
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.bfloat16, attn_implementation="sdpa").cuda().eval()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--base-hf", required=True)
    ap.add_argument("--export-hf", required=True)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--tol", type=float, default=0.01)
    a = ap.parse_args(argv)
    from launcher.jobspec import JobSpec

    spec = JobSpec.from_json((a.run_dir / "jobspec.json").read_text())
    t = spec.train
    gbs = t.parallelism.gbs
    log = step_log(a.run_dir)
    first = next(r for r in log if r.get("kind") == "train" and r.get("attempt") == 1 and r["step"] == 1)
    # with named validation sets val_loss is the first set's (NeMo's own validation dataset, dm._validation_ds)
    first_set = t.valid_sets[0].name if getattr(t, "valid_sets", None) else None
    vals = [r for r in log if r.get("kind") == "val" and r.get("val_loss") is not None
            and (first_set is None or r.get("set", first_set) == first_set)]
    last_val = max(vals, key=lambda r: (r["step"], r["attempt"]))
    train_ds, val_ds = datasets(spec)

    out: dict = {"run_dir": str(a.run_dir), "gbs": gbs, "seq": t.seq_length, "tol": a.tol}
    base = hf_model(a.base_hf)
    base_loss = mean_loss(base, train_ds, 0, 1, gbs)
    out["first_step"] = {"nemo_step1_loss": first["loss"], "hf_base_loss_first_batch": base_loss,
                         "rel_diff": abs(base_loss - first["loss"]) / base_loss}
    del base
    exported = hf_model(a.export_hf)
    exp_loss = mean_loss(exported, val_ds, 0, t.limit_val_batches, gbs)
    out["export"] = {"nemo_last_val_loss": last_val["val_loss"], "nemo_last_val_step": last_val["step"],
                     "hf_export_val_loss": exp_loss, "rel_diff": abs(exp_loss - last_val["val_loss"]) / exp_loss}
    out["ok"] = out["first_step"]["rel_diff"] <= a.tol and out["export"]["rel_diff"] <= a.tol
    text = json.dumps(out, indent=1)
    print(text)
    if a.json:
        a.json.write_text(text + "\n")
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
