#!/usr/bin/env bash
# Device call C (nvidia-h200-x2): what calls A/B left unproven, in one call of < 600 s.
#   GPU0: resume, through the launcher itself -- `cpt-launch --cluster benchmarks/train/h200-device.yaml
#         --random-init ...` (the user's single-node path: pre-flight, run dir, nemo_run LocalExecutor, the stage
#         script, recipes.entry) for call 4's configuration (8 layers, seq 8192, GBS 8, 40 steps, checkpoint every
#         10); kill -9 of the launcher and the trainer once a finished checkpoint exists (about step 18); then the
#         same command with --resume: it must continue call 4's loss curve (compare_resume.py against results/call4,
#         same seed and data order); then two more memory configurations (seq 4096, recompute none; seq 8192,
#         recompute full) for memory_check.py.
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
$MJ $ROOT/jobs/s4k8.json --name s4k8 --layers 8 --gpus 1 --gbs 8 --seq 4096 --steps 100 --ckpt-every 1000 --val-every 100
$MJ $ROOT/jobs/full8.json --name full8 --layers 8 --gpus 1 --gbs 8 --steps 100 --ckpt-every 1000 --val-every 100 --recompute full
$MJ $ROOT/jobs/ws48.json --name ws48 --layers 32 --gpus 1 --gbs 4 --steps 100 --ckpt-every 1000 --val-every 100 \
    --recompute full --offload --bf16-grads --cap-gib 47
DEADLINE=560
LAUNCH=(env PYTHONPATH=/tmp/site312:$REPO python3 -m launcher.cli --cluster benchmarks/train/h200-device.yaml
        --random-init --num-layers 8 --model-dir $ROOT/data/tokenizer --max-steps 40 --gbs 8 --ckpt-every 10
        --mbs 1 --recompute none --optimizer-offload off --run-name main8 --wait)
RUN=$ROOT/runs/main8
(
  export CUDA_VISIBLE_DEVICES=0
  echo "[$(el)s] START ${LAUNCH[*]}" >> $OUT/gpu0.log
  setsid "${LAUNCH[@]}" >> $OUT/gpu0.log 2>&1 &
  L=$!; t=0
  until [ "$(wc -l < $RUN/train/step_stats.jsonl 2>/dev/null || echo 0)" -ge 12 ] \
        && ls $RUN/checkpoints 2>/dev/null | grep -q -- '-last$'; do
    sleep 2; t=$((t+2)); kill -0 $L 2>/dev/null || break; [ $t -ge 200 ] && break
  done
  echo "[$(el)s] KILL -9 launcher and trainer after $(wc -l < $RUN/train/step_stats.jsonl) steps" >> $OUT/gpu0.log
  kill -9 -- -$L 2>/dev/null; pkill -9 -f -- "$RUN/jobspec.json"
  w=0; while pgrep -f -- "$RUN/jobspec.json" >/dev/null && [ $w -lt 60 ]; do sleep 1; w=$((w+1)); done
  ls -la $RUN/checkpoints >> $OUT/gpu0.log 2>&1
  echo "[$(el)s] RESUME ${LAUNCH[*]} --resume" >> $OUT/gpu0.log
  timeout $(( DEADLINE - 150 - $(el) )) "${LAUNCH[@]}" --resume >> $OUT/gpu0.log 2>&1
  echo "[$(el)s] resumed run rc=$?" >> $OUT/gpu0.log
  cp $RUN/logs/train.log $OUT/main8.train.log 2>/dev/null; ls -la $RUN/checkpoints >> $OUT/gpu0.log 2>&1
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
cp $RUN/jobspec.json $ROOT/jobs/main8.json 2>/dev/null   # the launcher wrote it: what the memory check reads
mkdir -p $ROOT/runs/main8/logs; cp $RUN/train/step_stats.jsonl $ROOT/runs/main8/logs/ 2>/dev/null
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
