#!/usr/bin/env bash
# Device call D (nvidia-h200, 1 GPU, 128 GiB host, 64 GiB disk): the whole pipeline from one cpt-launch command.
#   1. an offline HF base model: Llama-3.2-1B shape, 4 layers, real Llama-3.1 tokenizer, warmed up on English text
#      (make_base_model.py) so that its loss is its own, not ln(vocab);
#   2. `cpt-launch --cluster benchmarks/train/h200-device.yaml --model llama3.2-1b --num-layers 4 --model-dir BASE
#      --data jsonl/ja_train.jsonl --valid-data jsonl/ja_valid.jsonl ...` (download skipped: local dir; convert;
#      tokenize; train; export), kill -9 of the launcher and every process of the run once the step-10 checkpoint
#      is finished and step 15 is logged, then the same command with --resume;
#   3. two uninterrupted runs of the same spec (refA, refB: same data prefixes, same seed) beside it, for the
#      run-to-run noise;
#   4. loss_proofs.py (base HF loss = first step's loss; exported HF loss = last validation loss) and
#      compare_resume.py (resumed vs refA, noise refA vs refB).
# usage (device tool, kind nvidia-h200, carry [".dev/carry"]): bash benchmarks/train/device_d.sh
# Everything comes back as $OUT/results.tar.xz (the device tool returns at most 8 files) and $OUT/summary.txt.
set -u
source benchmarks/train/device_common.sh
R=$ROOT/out
mkdir -p $R $ROOT/models
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > $R/env.txt
setup_stack >> $R/env.txt 2>&1
export PYTHONPATH=/tmp/site312:$REPO
hostmem_sampler $R/hostmem.txt & HS=$!
DEADLINE=${DEADLINE:-575}
left() { echo $(( DEADLINE - $(el) )); }
note() { echo "[$(el)s] $*" | tee -a $R/timeline.txt; }
kill_run() {  # kill -9 every process whose environment says CPT_RUN_DIR=$1 (the stage scripts, the trainer)
  local p
  for p in /proc/[0-9]*; do
    tr '\0' '\n' < $p/environ 2>/dev/null | grep -qx "CPT_RUN_DIR=$1" && kill -9 ${p#/proc/} 2>/dev/null
  done
}
stage_state() { python3 -c "import json; print(json.load(open('$1/manifest.json'))['stages']['$2']['state'])" 2>/dev/null; }
finish() {
  kill $HS 2>/dev/null
  for r in pipe refA refB; do
    d=$ROOT/runs/$r
    [ -d $d ] || continue
    mkdir -p $R/$r
    cp $d/manifest*.json $d/jobspec.json $d/logs/train_steps.jsonl $R/$r/ 2>/dev/null
    for l in $d/logs/*.log; do grep -v "Warning\|warnings.warn" $l | tail -400 > $R/$r/$(basename $l); done
    ls -la $d/checkpoints > $R/$r/checkpoints.txt 2>&1
  done
  du -sh $ROOT/runs/*/checkpoints/* $ROOT/data/*-nemo $ROOT/runs/*/export/* >> $R/sizes.txt 2>&1
  df -h /tmp >> $R/sizes.txt
  tar cf - -C $ROOT out | xz -6 > $OUT/results.tar.xz
  cp $R/summary.txt $OUT/ 2>/dev/null
  cat $R/summary.txt 2>/dev/null
}
trap finish EXIT

note "base model"
timeout $(left) python3 benchmarks/train/make_base_model.py $ROOT/models/base-1b4 --tokenizer $ROOT/data/tokenizer \
    --model llama3.2-1b --layers 4 --warmup-jsonl $ROOT/data/jsonl/en_train.jsonl --warmup-steps 40 --seq 2048 \
    --batch 8 --device cuda > $R/base_model.log 2>&1
note "base model rc=$?"

COMMON=(--cluster benchmarks/train/h200-device.yaml --model llama3.2-1b --num-layers 4
        --model-dir $ROOT/models/base-1b4 --max-steps 40 --gbs 8 --mbs 1 --val-every 10 --recompute none
        --optimizer-offload off)
PIPE=(python3 -m launcher.cli "${COMMON[@]}" --data jsonl/ja_train.jsonl --valid-data jsonl/ja_valid.jsonl
      --ckpt-every 10 --ckpt-keep 1 --ckpt-async off --run-name pipe --wait)
ref() { timeout $(( $(left) - 60 )) python3 -m launcher.cli "${COMMON[@]}" --data tokenized/jsonl_ja_train_text_document \
          --valid-data tokenized/jsonl_ja_valid_text_document --ckpt-every 1000 --ckpt-keep 1 --ckpt-async off --run-name $1 --wait; }
RUN=$ROOT/runs/pipe
STEPS=$RUN/logs/train_steps.jsonl

note "START ${PIPE[*]}"
setsid "${PIPE[@]}" > $R/pipe_attempt1.log 2>&1 &
L=$!
refs_started=0 PA= PB=
while kill -0 $L 2>/dev/null && [ $(left) -gt 200 ]; do
  sleep 0.5
  if [ $refs_started = 0 ] && [ "$(stage_state $RUN train)" = RUNNING ]; then
    note "pipe train started: starting refA and refB beside it"
    (ref refA > $R/refA.log 2>&1; note "refA rc=$?") &
    PA=$!
    (sleep 5; ref refB > $R/refB.log 2>&1; note "refB rc=$?") &
    PB=$!
    refs_started=1
  fi
  n=$(grep -c '"kind": "train"' $STEPS 2>/dev/null); n=${n:-0}
  if [ "$n" -ge 15 ] && ls $RUN/checkpoints 2>/dev/null | grep -q -- '-last$' \
     && ! ls $RUN/checkpoints | grep -q -- '-unfinished'; then
    break
  fi
done
note "KILL -9 launcher and run processes after $(grep -c '"kind": "train"' $STEPS 2>/dev/null) logged steps"
kill -9 -- -$L 2>/dev/null; kill -9 $L 2>/dev/null; kill_run $RUN
sleep 2
ls -la $RUN/checkpoints >> $R/timeline.txt 2>&1
note "RESUME ${PIPE[*]} --resume"
timeout $(( $(left) - 45 )) "${PIPE[@]}" --resume > $R/pipe_attempt2.log 2>&1
note "resumed pipeline rc=$?"
[ -n "$PA" ] && wait $PA $PB   # not a bare wait: the host-memory sampler runs until the end
note "loss proofs"
timeout $(( $(left) - 5 )) python3 benchmarks/train/loss_proofs.py $RUN --base-hf $ROOT/models/base-1b4 \
    --export-hf "$(python3 -c "import json; print(json.load(open('$RUN/jobspec.json'))['export']['output_path'])")" --json $R/loss_proofs.json > $R/loss_proofs.txt 2>&1
note "loss proofs rc=$?"
{
  echo "== stage times (launcher)"; grep -h "stage .*: .* in " $R/pipe_attempt*.log $R/ref*.log
  echo "== manifest"; python3 -c "import json,sys; m=json.load(open('$RUN/manifest.json')); print({k: v['state'] for k, v in m['stages'].items()}, 'attempt', m['attempt'])"
  echo "== loss proofs"; grep -v "Warn\|warn" $R/loss_proofs.txt | tail -25
  echo "== resume: compare_resume.py pipe refA refB"
  python3 benchmarks/train/compare_resume.py $STEPS $ROOT/runs/refA/logs/train_steps.jsonl \
      $ROOT/runs/refB/logs/train_steps.jsonl --json $R/compare_resume.json
  echo "== timeline"; cat $R/timeline.txt
} > $R/summary.txt 2>&1
