#!/usr/bin/env bash
# Device call B (nvidia-h200-x2), after the fixes call A showed were needed:
#   GPU0: the train stage on 8 layers, seq 8192, GBS 8: checkpoint at step 10 -> kill -9 -> same command resumes
#         from its own checkpoint for 5 more steps; then recompute=full (memory config) while time is left.
#   GPU1: the 48 GB workstation emulation: all 32 layers, cap 47 GiB, host-side fp32 master + Adam, >= 10 steps.
set -u
source benchmarks/train/device_common.sh
setup_stack > $OUT/env.txt 2>&1
mkdir -p $ROOT/jobs
MJ="python3 benchmarks/train/make_jobspec.py"
$MJ $ROOT/jobs/main8.json --name main8 --layers 8 --gpus 1 --gbs 8 --steps 40 --ckpt-every 10 --val-every 10
$MJ $ROOT/jobs/full8.json --name full8 --layers 8 --gpus 1 --gbs 8 --steps 100 --ckpt-every 1000 --val-every 100 --recompute full
$MJ $ROOT/jobs/ws48.json --name ws48 --layers 32 --gpus 1 --gbs 4 --steps 100 --ckpt-every 1000 --val-every 100 \
    --recompute full --offload --bf16-grads --cap-gib 47
(
  export CUDA_VISIBLE_DEVICES=0
  WAIT_CKPT=1 train main8 1 29511 $OUT/gpu0.log 12 230
  n=$(wc -l < $ROOT/runs/main8/logs/step_stats.jsonl 2>/dev/null || echo 0)
  ls -la $ROOT/runs/main8/checkpoints >> $OUT/gpu0.log 2>&1
  train main8 1 29511 $OUT/gpu0.log $((n + 5)) $(( 395 - $(el) ))   # same spec: resumes from its own checkpoint
  rm -rf $ROOT/runs/main8/checkpoints
  [ $(el) -lt 290 ] && train full8 1 29513 $OUT/gpu0.log 4 $(( 395 - $(el) ))
) &
G0=$!
(
  export CUDA_VISIBLE_DEVICES=1
  hostmem_sampler $OUT/hostmem.txt & HS=$!
  train ws48 1 29512 $OUT/gpu1.log 10 $(( 395 - $(el) ))
  kill $HS
) &
G1=$!
while kill -0 $G0 2>/dev/null || kill -0 $G1 2>/dev/null; do
  sleep 3
  if [ $(el) -ge 398 ]; then echo "[$(el)s] deadline: stopping" >> $OUT/env.txt; kill $G0 $G1 2>/dev/null; kill_all_runs; break; fi
done
kill_all_runs
for r in main8 full8 ws48; do [ -f $ROOT/runs/$r/logs/step_stats.jsonl ] && { echo "== $r"; cat $ROOT/runs/$r/logs/step_stats.jsonl; }; done > $OUT/steps.txt
echo "[$(el)s] done" >> $OUT/env.txt
cut -c1-200 $OUT/steps.txt
