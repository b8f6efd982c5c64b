"""The download stage: fetch the HF model with huggingface_hub.snapshot_download.

Skips the download when the destination already holds a complete model (config, tokenizer, weights), and works
offline (HF_HUB_OFFLINE=1) from the cache. A gated repo without access gets an explanation, not a traceback.
HF_TOKEN is read from the environment by huggingface_hub itself; it is never printed.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

REQUIRED = ("config.json", "tokenizer.json", "tokenizer_config.json")
WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def is_complete(dest: Path) -> bool:
    return all((dest / f).is_file() for f in REQUIRED) and any((dest / f).is_file() for f in WEIGHTS)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m launcher.stages.download")
    ap.add_argument("--repo", required=True, help="HF repo id, e.g. meta-llama/Llama-3.1-8B")
    ap.add_argument("--dest", required=True, help="directory to hold the model")
    ap.add_argument("--revision", default=None)
    args = ap.parse_args(argv)
    dest = Path(args.dest)
    if is_complete(dest):
        print(f"[download] {dest} already holds a complete model; nothing to do", file=sys.stderr)
        return 0
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError

    offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
    try:
        path = snapshot_download(args.repo, revision=args.revision, local_dir=str(dest),
                                 allow_patterns=["*.json", "*.safetensors", "tokenizer*", "*.model"])
    except GatedRepoError:
        print(f"[download] {args.repo} is a gated repo: accept its license on huggingface.co with your account, "
              "then export HF_TOKEN (a read token) in the shell you submit from; cpt-launch passes it by name.",
              file=sys.stderr)
        return 2
    except RepositoryNotFoundError:
        token = "set" if os.environ.get("HF_TOKEN") else "not set"
        print(f"[download] {args.repo}: not found or not visible with your token (HF_TOKEN {token}).",
              file=sys.stderr)
        return 2
    except LocalEntryNotFoundError:
        why = "HF_HUB_OFFLINE=1 and the model is not in the cache" if offline else "the hub cannot be reached"
        print(f"[download] {args.repo}: {why}; download it on a machine with network into {dest} "
              f"(or HF_HOME={os.environ.get('HF_HOME', '~/.cache/huggingface')}), or pass --model-dir.",
              file=sys.stderr)
        return 2
    if not is_complete(Path(path)):
        print(f"[download] {path} is missing some of {REQUIRED} or the weights", file=sys.stderr)
        return 2
    print(f"[download] {args.repo} -> {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
