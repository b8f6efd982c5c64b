#!/usr/bin/env bash
# Device call E (nvidia-h200): a Japanese + English replay mix with one validation loss per language, from one
# cpt-launch command, through the evaluate stage; then the same run with the ja set alone (the ja loss must not
# depend on whether en is validated beside it).
#   1. the offline base model (make_base_model.py, as in call D);
#   2. `cpt-launch ... --data 0.9:jsonl/ja_train.jsonl --data 0.1:jsonl/en_train.jsonl --valid-data ja=... 
#      --valid-data en=... --wait`: download skipped, convert, tokenize (4 inputs), train, export, evaluate;
#   3. `cpt-launch status mix --json` (the live-progress figures at the end);
#   4. run "jaonly": the same spec, --valid-data ja=... only, --evaluate off (convert and tokenize are reused).
# usage (device tool, kind nvidia-h200, carry [".dev/carry"]): DEADLINE=560 bash benchmarks/train/device_e.sh
# Everything comes back as $OUT/results.tar.xz (run directories without checkpoints or weights) and summary.txt.
set -u
source benchmarks/train/device_common.sh
R=$ROOT/out
mkdir -p $R $ROOT/models
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > $R/env.txt
setup_stack >> $R/env.txt 2>&1
export PYTHONPATH=/tmp/site312:$REPO
export CPT_STATE_DIR=$ROOT/state
DEADLINE=${DEADLINE:-560}
left() { echo $(( DEADLINE - $(el) )); }
note() { echo "[$(el)s] $*" | tee -a $R/timeline.txt; }
finish() {
  for r in mix jaonly; do
    d=$ROOT/runs/$r
    [ -d $d ] && tar cf - -C $ROOT/runs --exclude="$r/checkpoints" --exclude='*.safetensors' --exclude='*.bin' \
        $r | tar xf - -C $R
    ls -la $d/checkpoints > $R/$r.checkpoints.txt 2>&1
  done
  du -sh $ROOT/runs/*/checkpoints/* $ROOT/data/*-nemo $ROOT/runs/*/export/* >> $R/sizes.txt 2>&1
  df -h /tmp >> $R/sizes.txt
  tar cf - -C $ROOT out | xz -6 > $OUT/results.tar.xz
  cp $R/summary.txt $OUT/ 2>/dev/null
  cat $R/summary.txt 2>/dev/null
}
trap finish EXIT

note "base model"
timeout $(left) python3 benchmarks/train/make_base_model.py $ROOT/data/base-1b4 --tokenizer $ROOT/data/tokenizer \
    --model llama3.2-1b --layers 4 --warmup-jsonl $ROOT/data/jsonl/en_train.jsonl --warmup-steps 40 --seq 2048 \
    --batch 8 --device cuda > $R/base_model.log 2>&1
note "base model rc=$?"

COMMON=(--cluster benchmarks/train/h200-device.yaml --model llama3.2-1b --num-layers 4
        --model-dir $ROOT/data/base-1b4 --max-steps 40 --gbs 8 --mbs 1 --val-every 10 --recompute none
        --optimizer-offload off --data 0.9:jsonl/ja_train.jsonl --data 0.1:jsonl/en_train.jsonl --ckpt-keep 1
        --ckpt-async off)
note "START mix"
timeout $(( $(left) - 150 )) python3 -m launcher.cli "${COMMON[@]}" --valid-data ja=jsonl/ja_valid.jsonl \
    --valid-data en=jsonl/en_valid.jsonl --ckpt-every 20 --run-name mix --wait > $R/mix.log 2>&1
note "mix rc=$?"
python3 -m launcher.cli status mix --json > $R/mix.status.json 2> $R/mix.status.err
python3 -m launcher.cli status mix > $R/mix.status.txt 2>&1
if [ $(left) -gt 130 ]; then
  note "START jaonly"
  timeout $(( $(left) - 15 )) python3 -m launcher.cli "${COMMON[@]}" --valid-data ja=jsonl/ja_valid.jsonl \
      --ckpt-every 1000 --evaluate off --run-name jaonly --wait > $R/jaonly.log 2>&1
  note "jaonly rc=$?"
fi
{
  echo "== stage times (launcher)"; grep -h "stage .*: .* in " $R/mix.log $R/jaonly.log 2>/dev/null
  echo "== status mix"; cat $R/mix.status.txt
  echo "== validation lines (mix, then jaonly)"
  grep -h '"kind": "val"' $ROOT/runs/mix/logs/train_steps.jsonl 2>/dev/null | cut -c1-200
  grep -h '"kind": "val"' $ROOT/runs/jaonly/logs/train_steps.jsonl 2>/dev/null | cut -c1-200
  echo "== mix as the train job logged it"; grep -h -i "blend\|mix\|share" $ROOT/runs/mix/logs/train.log | head -8
  echo "== evaluate"; python3 -c "import json; d=json.load(open('$ROOT/runs/mix/eval/evaluate.json')); print(json.dumps({k: d[k] for k in ('ppl', 'japanese_reply_share')}))"
  echo "== timeline"; cat $R/timeline.txt
} > $R/summary.txt 2>&1
