"""Small CPU programs started exactly the way the training step is started (same sbatch template, same rendezvous).

``python -m launcher.stages.selftest allreduce --out FILE``
    Forms one gloo process group from the template's rendezvous (MASTER_ADDR, MASTER_PORT, WORLD_SIZE from the
    batch script; RANK, LOCAL_RANK, NODE_RANK from each task's Slurm environment), checks ranks, world size,
    nodes and an all-reduce, and (rank 0) writes what it saw as JSON.

``python -m launcher.stages.selftest train-loop --ckpt-dir D --base FILE --steps N --ckpt-every K --log FILE``
    A deterministic "training" loop that behaves like the real trainer where it matters for requeue: it starts
    from the run's own latest checkpoint, else the base weights (``launcher.resume.decide_resume``, the one rule
    the train recipe uses too); saves ``<name>--step=K-last`` every K steps atomically (NeMo's ``-unfinished``
    marker while writing); on SIGUSR1 every rank agrees to stop after the current step, saves and exits 0.
    Rank 0 appends one line per finished step to the step log, so a test can prove no step was lost or repeated.
    The state after step k is ``base + sum_{i<=k} i * W(W+1)/2`` (an all-reduce of rank+1 per step): exact, so a
    skipped or doubled step shows in the value.

Exit codes: 0 done (or stopped cleanly on SIGUSR1), 1 a check failed, 2 configuration error (never requeued).
torch is imported inside the functions: importing this module stays cheap.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

EXIT_CONFIG_ERROR = 2
CKPT_NAME = "selftest"


def _log(msg: str) -> None:
    print(f"[selftest rank {os.environ.get('RANK', '?')}] {msg}", file=sys.stderr, flush=True)


def _env_int(name: str) -> int:
    v = os.environ.get(name)
    if v is None or not v.lstrip("-").isdigit():
        raise SystemExit(_config_error(f"{name}={v!r}: not set by the launch script (expected an integer)"))
    return int(v)


def _config_error(msg: str) -> int:
    print(f"selftest: configuration error: {msg}", file=sys.stderr, flush=True)
    return EXIT_CONFIG_ERROR


def init_process_group() -> tuple[Any, int, int]:
    """gloo over env:// with the variables the sbatch template exports; returns (dist, rank, world)."""
    import torch.distributed as dist

    rank, world = _env_int("RANK"), _env_int("WORLD_SIZE")
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if not os.environ.get(name):
            raise SystemExit(_config_error(f"{name} is not set by the launch script"))
    # A short timeout: a peer that died (node failure) ends this rank promptly instead of after 30 minutes.
    dist.init_process_group("gloo", init_method="env://", rank=rank, world_size=world,
                            timeout=timedelta(seconds=60))
    return dist, rank, world


def cmd_allreduce(args: argparse.Namespace) -> int:
    import torch

    dist, rank, world = init_process_group()
    t = torch.tensor([float(rank + 1)], dtype=torch.float64)
    dist.all_reduce(t)
    me = {
        "rank": rank, "local_rank": _env_int("LOCAL_RANK"), "node_rank": _env_int("NODE_RANK"),
        "node": os.environ.get("SLURMD_NODENAME", socket.gethostname()), "pid": os.getpid(),
    }
    seen: list[Any] = [None] * world
    dist.all_gather_object(seen, me)
    expect_world = int(os.environ.get("SLURM_NTASKS", world))
    nnodes = int(os.environ.get("SLURM_NNODES", "1"))
    problems = []
    if world != expect_world:
        problems.append(f"world size {world} != SLURM_NTASKS {expect_world}")
    if sorted(s["rank"] for s in seen) != list(range(world)):
        problems.append(f"ranks {sorted(s['rank'] for s in seen)} are not 0..{world - 1}")
    if len({s["node"] for s in seen}) != nnodes:
        problems.append(f"{len({s['node'] for s in seen})} distinct nodes, SLURM_NNODES={nnodes}")
    if t.item() != world * (world + 1) / 2:
        problems.append(f"all-reduce sum {t.item()} != {world * (world + 1) // 2}")
    result = {"world_size": world, "nnodes": nnodes, "allreduce_sum": t.item(), "tasks": seen,
              "master": f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}", "problems": problems}
    if rank == 0 and args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(args.out).with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=2) + "\n")
        os.replace(tmp, args.out)
    dist.barrier()
    dist.destroy_process_group()
    for p in problems:
        _log(f"FAILED: {p}")
    return 1 if problems else 0


# ---- train-loop ------------------------------------------------------------------------------------------------


def _save(ckpt_dir: Path, step: int, value: float) -> str:
    """Write ``selftest--step=K-last`` atomically; NeMo's ``-unfinished`` marker exists while it is written."""
    import torch

    name = f"{CKPT_NAME}--step={step}-last"
    marker = ckpt_dir / f"{name}-unfinished"
    marker.touch()
    tmp = ckpt_dir / f".tmp-{name}"
    tmp.mkdir(exist_ok=True)
    with open(tmp / "state.pt", "wb") as f:
        torch.save({"step": step, "value": value}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, ckpt_dir / name)
    marker.unlink()
    return name


def _append(path: Path, line: str) -> None:
    with open(path, "a") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())


def cmd_train_loop(args: argparse.Namespace) -> int:
    if args.config_error:
        return _config_error("--config-error given (the test of 'a config error is not requeued')")
    if args.steps < 1 or args.ckpt_every < 1:
        return _config_error(f"--steps={args.steps} --ckpt-every={args.ckpt_every}: both must be >= 1")
    import torch

    from launcher.resume import decide_resume

    stop = {"asked": False}

    def on_usr1(signum: int, frame: Any) -> None:
        stop["asked"] = True

    signal.signal(signal.SIGUSR1, on_usr1)  # before the rendezvous: the signal may come at any time
    dist, rank, world = init_process_group()
    ckpt_dir = Path(args.ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    attempt = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
    log = Path(args.log)

    decision = decide_resume(os.listdir(ckpt_dir), args.base)
    if not decision.ok:
        return _config_error(decision.reason)
    if decision.source == "own_checkpoint":
        assert decision.path is not None and decision.step is not None
        state = torch.load(ckpt_dir / decision.path / "state.pt")
        start, value = int(state["step"]), float(state["value"])
        if start != decision.step:
            _log(f"FAILED: checkpoint {decision.path} holds step {start}")
            return 1
    else:
        start, value = 0, float(json.loads(Path(decision.path or "").read_text())["value"])
    if rank == 0:
        _append(log, f"attempt={attempt} resume source={decision.source} step={start} value={value:g} world={world}")
    _log(decision.reason)

    per_step = world * (world + 1) / 2
    step = start
    while step < args.steps:
        step += 1
        g = torch.tensor([float(rank + 1)], dtype=torch.float64)
        dist.all_reduce(g)
        value += step * g.item()
        if g.item() != per_step:
            _log(f"FAILED: all-reduce {g.item()} != {per_step}")
            return 1
        time.sleep(args.step_seconds)
        if rank == 0:
            _append(log, f"attempt={attempt} step={step} value={value:g}")
        # every rank must stop at the same step: agree on "a rank was signalled"
        flag = torch.tensor([1.0 if stop["asked"] else 0.0])
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        stopping = flag.item() > 0 and step < args.steps
        if rank == 0 and (step % args.ckpt_every == 0 or stopping or step == args.steps):
            name = _save(ckpt_dir, step, value)
            _append(log, f"attempt={attempt} saved {name}")
        dist.barrier()
        if stopping:
            if rank == 0:
                _append(log, f"attempt={attempt} stopped on SIGUSR1 after step={step}")
            _log(f"SIGUSR1: checkpointed step {step}, stopping")
            dist.destroy_process_group()
            return 0
    if rank == 0:
        _append(log, f"attempt={attempt} done step={step} value={value:g}")
    dist.destroy_process_group()
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m launcher.stages.selftest", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="mode", required=True)
    a = sub.add_parser("allreduce", help="one process group across all nodes: ranks, world size, all-reduce")
    a.add_argument("--out", help="rank 0 writes what it saw here (JSON)")
    t = sub.add_parser("train-loop", help="a deterministic loop that checkpoints, stops on SIGUSR1 and resumes")
    t.add_argument("--ckpt-dir", required=True, help="the run's own checkpoint directory")
    t.add_argument("--base", required=True, help="the 'base weights': a JSON file {\"value\": number}")
    t.add_argument("--steps", type=int, required=True, help="total steps")
    t.add_argument("--ckpt-every", type=int, default=5, help="checkpoint every K steps")
    t.add_argument("--step-seconds", type=float, default=0.2, help="time one step takes")
    t.add_argument("--log", "--step-log", dest="log", required=True,
                   help="step log (rank 0 appends); --step-log under torchrun, whose parser takes --log for --log-dir")
    t.add_argument("--config-error", action="store_true", help="exit 2 at once, as a bad configuration does")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.mode == "allreduce":
        return cmd_allreduce(args)
    return cmd_train_loop(args)


if __name__ == "__main__":
    sys.exit(main())
