#!/usr/bin/env bash
# Device call C (nvidia-h200-x2): what calls A/B left unproven, in one call of < 600 s.
#   GPU0: resume -- main8, the exact JobSpec of call 4 (8 layers, seq 8192, GBS 8, 40 steps, async checkpoint every
#         10), killed with kill -9 once a finished checkpoint exists (about step 18), then the same command again: it
#         must resume from its own checkpoint and continue call 4's loss curve (compare_resume.py against
#         results/call4, same seed and data order); then two more memory configurations (seq 4096, recompute none;
#         seq 8192, recompute full) for memory_check.py.
#   GPU1: the 48 GB workstation emulation again (32 layers, cap 47 GiB, host_master = precision-aware optimizer +
#         CPU offload, bf16 grads, recompute full), now with expandable_segments (recipes.entry sets it for offload
#         runs): >= 10 steps, tokens/s and host memory.
# usage (device tool, kind nvidia-h200-x2, carry [".dev/carry"]): bash benchmarks/train/device_c.sh
# Needs .dev/carry from benchmarks/train/README.md ("What ran") and results/call4/steps.txt as the reference.
set -u
source benchmarks/train/device_common.sh
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > $OUT/env.txt
setup_stack >> $OUT/env.txt 2>&1
mkdir -p $ROOT/jobs
MJ="python3 benchmarks/train/make_jobspec.py"
$MJ $ROOT/jobs/main8.json --name main8 --layers 8 --gpus 1 --gbs 8 --steps 40 --ckpt-every 10 --val-every 10
$MJ $ROOT/jobs/s4k8.json --name s4k8 --layers 8 --gpus 1 --gbs 8 --seq 4096 --steps 100 --ckpt-every 1000 --val-every 100
$MJ $ROOT/jobs/full8.json --name full8 --layers 8 --gpus 1 --gbs 8 --steps 100 --ckpt-every 1000 --val-every 100 --recompute full
$MJ $ROOT/jobs/ws48.json --name ws48 --layers 32 --gpus 1 --gbs 4 --steps 100 --ckpt-every 1000 --val-every 100 \
    --recompute full --offload --bf16-grads --cap-gib 47
DEADLINE=560
(
  export CUDA_VISIBLE_DEVICES=0
  WAIT_CKPT=1 train main8 1 29511 $OUT/gpu0.log 12 200      # killed once a finished (-last) checkpoint exists
  ls -la $ROOT/runs/main8/checkpoints >> $OUT/gpu0.log 2>&1
  train main8 1 29511 $OUT/gpu0.log 1000 $(( DEADLINE - 150 - $(el) ))   # same command: resumes, runs to step 40
  train s4k8 1 29513 $OUT/gpu0.log 6 $(( DEADLINE - 75 - $(el) ))
  train full8 1 29514 $OUT/gpu0.log 6 $(( DEADLINE - $(el) ))
) &
G0=$!
(
  export CUDA_VISIBLE_DEVICES=1
  hostmem_sampler $OUT/hostmem.txt & HS=$!
  train ws48 1 29512 $OUT/gpu1.log 12 $(( DEADLINE - $(el) ))
  kill $HS
) &
G1=$!
while kill -0 $G0 2>/dev/null || kill -0 $G1 2>/dev/null; do
  sleep 3
  if [ $(el) -ge $((DEADLINE + 5)) ]; then echo "[$(el)s] deadline: stopping" >> $OUT/env.txt; kill $G0 $G1 2>/dev/null; kill_all_runs; break; fi
done
kill_all_runs
for r in main8 s4k8 full8 ws48; do
  s=$ROOT/runs/$r/logs/step_stats.jsonl
  [ -f $s ] && { echo "== $r"; cat $s; cp $s $OUT/$r.step_stats.jsonl; cp $ROOT/jobs/$r.json $OUT/$r.jobspec.json; }
done > $OUT/steps.txt
awk '/^== main8/{f=1;next}/^== /{f=0}f' benchmarks/train/results/call4/steps.txt > $ROOT/call4_main8.jsonl
{
  echo "== resume: python3 benchmarks/train/compare_resume.py results/call4 main8 <this call's main8>"
  python3 benchmarks/train/compare_resume.py $ROOT/call4_main8.jsonl $ROOT/runs/main8/logs/step_stats.jsonl
  echo "rc=$?"
  echo "== memory: python3 benchmarks/train/memory_check.py (jobspec, step stats) pairs"
  args=""
  for r in main8 s4k8 full8 ws48; do
    [ -s $OUT/$r.step_stats.jsonl ] && args="$args $OUT/$r.jobspec.json $OUT/$r.step_stats.jsonl"
  done
  [ -n "$args" ] && python3 benchmarks/train/memory_check.py $args
} > $OUT/summary.txt 2>&1
echo "[$(el)s] done" >> $OUT/env.txt
cat $OUT/summary.txt
