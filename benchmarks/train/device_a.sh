#!/usr/bin/env bash
# Device call A (nvidia-h200-x2, one GPU per stream, both streams at once):
#   GPU0: the train stage on 8 layers, seq 8192, GBS 8 -> kill after the step-20 checkpoint -> resume to step 30;
#         then memory configurations (recompute full; seq 4096).
#   GPU1: the plain-PyTorch baseline, then the 48 GB workstation emulation (32 layers, host-side optimizer).
# usage (device tool): bash benchmarks/train/device_a.sh   (carry .dev/carry); logs land in $OUT.
set -u
source benchmarks/train/device_common.sh
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > $OUT/env.txt
python3 -c "import torch,sys; print(sys.version.split()[0], torch.__version__, torch.version.cuda)" >> $OUT/env.txt
nproc >> $OUT/env.txt; grep MemTotal /proc/meminfo >> $OUT/env.txt; df -h /tmp >> $OUT/env.txt
setup_stack >> $OUT/env.txt 2>&1
$NEMO_PY -c "import nvidia_resiliency_ext.ptl_resiliency.local_checkpoint_callback" >> $OUT/env.txt 2>&1; echo "nvrx import rc=$?" >> $OUT/env.txt
mkdir -p $ROOT/jobs
MJ="python3 benchmarks/train/make_jobspec.py"
$MJ $ROOT/jobs/main8.json --name main8 --layers 8 --gpus 1 --gbs 8 --steps 40 --ckpt-every 20 --val-every 20
$MJ $ROOT/jobs/full8.json --name full8 --layers 8 --gpus 1 --gbs 8 --steps 100 --ckpt-every 1000 --val-every 100 --recompute full
$MJ $ROOT/jobs/s4k8.json --name s4k8 --layers 8 --gpus 1 --gbs 8 --seq 4096 --steps 100 --ckpt-every 1000 --val-every 100
$MJ $ROOT/jobs/tp2l32.json --name tp2l32 --layers 32 --gpus 2 --tp 2 --sp --gbs 8 --steps 100 --ckpt-every 1000 --val-every 100
$MJ $ROOT/jobs/dp2l8.json --name dp2l8 --layers 8 --gpus 2 --gbs 16 --steps 100 --ckpt-every 1000 --val-every 100
$MJ $ROOT/jobs/ws48.json --name ws48 --layers 32 --gpus 1 --gbs 8 --steps 100 --ckpt-every 1000 --val-every 100 \
    --recompute full --offload --bf16-grads --cap-gib 47
( $NEMO_PY -m recipes.entry train --jobspec $ROOT/jobs/main8.json --validate-only ) > $OUT/validate.txt 2>&1
(
  export CUDA_VISIBLE_DEVICES=0
  WAIT_CKPT=1 train main8 1 29511 $OUT/gpu0.log 22 330
  train main8 1 29511 $OUT/gpu0.log 30 200   # same spec, same dirs: resumes from its own checkpoint
  rm -rf $ROOT/runs/main8/checkpoints
  train full8 1 29513 $OUT/gpu0.log 5 120
  train s4k8 1 29514 $OUT/gpu0.log 5 100
) &
G0=$!
(
  export CUDA_VISIBLE_DEVICES=1
  echo "[$(el)s] baseline" >> $OUT/gpu1.log
  timeout 150 python3 benchmarks/train/baseline_hf.py --layers 8 --seq 8192 --accum 8 --steps 5 \
      --data $ROOT/data/ja_text_document >> $OUT/gpu1.log 2>&1
  echo "[$(el)s] baseline rc=$?" >> $OUT/gpu1.log
  hostmem_sampler $OUT/hostmem.txt & HS=$!
  train ws48 1 29512 $OUT/gpu1.log 11 $(( 560 - $(el) ))
  kill $HS
) &
G1=$!
while kill -0 $G0 2>/dev/null || kill -0 $G1 2>/dev/null; do
  sleep 5
  if [ $(el) -ge 470 ]; then echo "[$(el)s] deadline: stopping" >> $OUT/env.txt; kill $G0 $G1 2>/dev/null; kill_all_runs; break; fi
done
kill_all_runs
# both GPUs: all 32 layers with TP=2 (+SP), then 8 layers with DP=2, while the call has time left
unset CUDA_VISIBLE_DEVICES
[ $(el) -lt 470 ] && train tp2l32 2 29515 $OUT/gpu01.log 6 $(( 570 - $(el) ))
[ $(el) -lt 490 ] && train dp2l8 2 29516 $OUT/gpu01.log 6 $(( 570 - $(el) ))
kill_all_runs
for r in main8 full8 s4k8 ws48 tp2l32 dp2l8; do [ -f $ROOT/runs/$r/logs/step_stats.jsonl ] && { echo "== $r"; cat $ROOT/runs/$r/logs/step_stats.jsonl; }; done > $OUT/steps.txt
grep -h "^RESULT\|^BASE" $OUT/gpu1.log >> $OUT/steps.txt
echo "[$(el)s] done" >> $OUT/env.txt
cat $OUT/steps.txt | cut -c1-250
