#!/usr/bin/env bash
# Downloads the Python 3.12 wheels that lm-evaluation-harness 0.4.13 needs on the H200 GPU machine (no network
# there) into .whl-eval/ of the project root, for `cpt-launch evaluate --lm-eval ...`. Perplexity and replies need
# none of them (torch, transformers, numpy, pyyaml and tqdm are on that machine already).
# usage (in the project root): bash benchmarks/eval/fetch-eval-wheels.sh   -> .whl-eval/ (.gitignore: /.whl*/)
# An sdist-only package (sqlitedict, word2number, rouge-score) is built into a pure-Python wheel here.
# On the machine: python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site-eval .whl-eval/*.whl
# then PYTHONPATH=/tmp/site-eval (after any other --target folder: the machine's own packages stay first otherwise).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
plat=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
dir=.whl-eval
mkdir -p "$dir"
fail=0
while read -r req; do
  [ -n "$req" ] || continue
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${plat[@]}" \
    -d "$dir" "$req" 2>/dev/null \
  || python3 -m pip wheel -q --no-deps -w "$dir" "$req" 2>/dev/null \
  || { echo "could not get $req" >&2; fail=1; }
done < "$here/wheels-eval.txt"
du -sh "$dir"
exit $fail
