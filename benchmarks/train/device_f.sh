#!/usr/bin/env bash
# Device call F (nvidia-h200): the ja+en mix of call E with two named validation sets, killed with kill -9 once the
# step-10 checkpoint is final and step 15 is logged, then the same command with --resume; then loss_proofs.py
# (proof 2 after a resume: the exported HF model's loss on NeMo's first validation set = the last ja val_loss).
# usage (device tool, kind nvidia-h200, carry [".dev/carry"]): DEADLINE=520 bash benchmarks/train/device_f.sh
set -u
source benchmarks/train/device_common.sh
R=$ROOT/out
mkdir -p $R
setup_stack > $R/env.txt 2>&1
export PYTHONPATH=/tmp/site312:$REPO CPT_STATE_DIR=$ROOT/state
DEADLINE=${DEADLINE:-520}
left() { echo $(( DEADLINE - $(el) )); }
note() { echo "[$(el)s] $*" | tee -a $R/timeline.txt; }
kill_run() {
  local p
  for p in /proc/[0-9]*; do
    { tr '\0' '\n' < $p/environ; } 2>/dev/null | grep -qx "CPT_RUN_DIR=$1" && kill -9 ${p#/proc/} 2>/dev/null
  done
}
RUN=$ROOT/runs/mixr
finish() {
  tar cf - -C $ROOT/runs --exclude=mixr/checkpoints --exclude='*.safetensors' --exclude='*.bin' mixr | tar xf - -C $R
  ls -la $RUN/checkpoints > $R/checkpoints.txt 2>&1
  tar cf - -C $ROOT out | xz -6 > $OUT/results.tar.xz
  cp $R/summary.txt $OUT/ 2>/dev/null; cat $R/summary.txt 2>/dev/null
}
trap finish EXIT
timeout $(left) python3 benchmarks/train/make_base_model.py $ROOT/data/base-1b4 --tokenizer $ROOT/data/tokenizer \
    --model llama3.2-1b --layers 4 --warmup-jsonl $ROOT/data/jsonl/en_train.jsonl --warmup-steps 40 --seq 2048 \
    --batch 8 --device cuda > $R/base_model.log 2>&1
note "base model rc=$?"
CMD=(python3 -m launcher.cli --cluster benchmarks/train/h200-device.yaml --model llama3.2-1b --num-layers 4
     --model-dir $ROOT/data/base-1b4 --max-steps 40 --gbs 8 --mbs 1 --val-every 10 --recompute none
     --optimizer-offload off --data 0.9:jsonl/ja_train.jsonl --data 0.1:jsonl/en_train.jsonl
     --valid-data ja=jsonl/ja_valid.jsonl --valid-data en=jsonl/en_valid.jsonl --ckpt-every 10 --ckpt-keep 1
     --ckpt-async off --evaluate off --run-name mixr --wait)
STEPS=$RUN/logs/train_steps.jsonl
setsid "${CMD[@]}" > $R/attempt1.log 2>&1 &
L=$!
while kill -0 $L 2>/dev/null && [ "$(left)" -gt 200 ]; do
  sleep 0.5
  n=$(grep -c '"kind": "train"' $STEPS 2>/dev/null); n=${n:-0}
  if [ "$n" -ge 15 ] && ls $RUN/checkpoints 2>/dev/null | grep -q -- '-last$' \
     && ! ls $RUN/checkpoints | grep -q -- '-unfinished'; then break; fi
done
note "KILL -9 after $(grep -c '"kind": "train"' $STEPS 2>/dev/null) logged steps"
kill -9 -- -$L 2>/dev/null; kill -9 $L 2>/dev/null; kill_run $RUN
sleep 2
ls -la $RUN/checkpoints >> $R/timeline.txt 2>&1
timeout $(( $(left) - 60 )) "${CMD[@]}" --resume > $R/attempt2.log 2>&1
note "resumed rc=$?"
timeout $(( $(left) - 5 )) python3 benchmarks/train/loss_proofs.py $RUN --base-hf $ROOT/data/base-1b4 \
    --export-hf "$(python3 -c "import json; print(json.load(open('$RUN/jobspec.json'))['export']['output_path'])")" \
    --json $R/loss_proofs.json > $R/loss_proofs.txt 2>&1
note "loss proofs rc=$?"
{
  echo "== stage times"; grep -h "stage .*: .* in " $R/attempt*.log
  echo "== manifest"; python3 -c "import json; m=json.load(open('$RUN/manifest.json')); print({k: v['state'] for k, v in m['stages'].items()}, 'attempt', m['attempt'])"
  echo "== validation lines"; grep -h '"kind": "val"' $STEPS | cut -c1-160
  echo "== loss proofs"; grep -v "Warn\|warn" $R/loss_proofs.txt | tail -20
  echo "== timeline"; cat $R/timeline.txt
} > $R/summary.txt 2>&1
