# Sourced by the device scripts: environment and helpers for runs on the nvidia-h200(-x2) machine.
# The stack travels as one archive (.dev/carry/site312.tar.xz: the wheels of ../shared/device/wheels-{a,b}.txt,
# unpacked and xz-compressed here, 41.5 MB), and the data as .dev/carry/data.tar.xz (prepare_data.py's output).
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export CUDA_DEVICE_MAX_CONNECTIONS=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1 WANDB_MODE=offline
export TOKENIZERS_PARALLELISM=false
ROOT=/tmp/cpt
REPO=$PWD
OUT=${OUT:-/tmp/out}
T0=$(date +%s)
el() { echo $(( $(date +%s) - T0 )); }
setup_stack() {
  mkdir -p $ROOT
  if [ ! -f /tmp/site312/.ok ]; then
    xz -T0 -dc .dev/carry/site312.tar.xz | tar x -C /tmp && touch /tmp/site312/.ok
    # wheels missing from ../shared/device/wheels-*.txt (defusedxml: nvidia_resiliency_ext's health check imports it)
    for w in .dev/carry/extra/*.whl; do python3 -m zipfile -e "$w" /tmp/site312/; done
  fi
  [ -d $ROOT/data ] || xz -T0 -dc .dev/carry/data.tar.xz | tar x -C $ROOT
  echo "[$(el)s] stack unpacked; $(df -h /tmp | tail -1)"
}
NEMO_PY="env PYTHONPATH=/tmp/site312:$REPO python3"
# train NAME GPUS PORT LOG STOP_AT_STEP TIMEOUT -- runs the train stage through the container entrypoint under
# torchrun; kills the whole process group once STOP_AT_STEP step lines were logged (and, with WAIT_CKPT=1, a
# finished -last checkpoint exists) or TIMEOUT seconds passed.
train() {
  local name=$1 gpus=$2 port=$3 log=$4 stop=$5 tmo=$6
  local js=$ROOT/jobs/$name.json
  local stats=$ROOT/runs/$name/logs/step_stats.jsonl
  local ck=$ROOT/runs/$name/checkpoints
  echo "[$(el)s] START $name: torchrun --nproc-per-node $gpus -m recipes.entry train --jobspec $js" | tee -a $log
  setsid $NEMO_PY -m torch.distributed.run --nproc-per-node $gpus --master-port $port \
      -m recipes.entry train --jobspec $js >>$log 2>&1 &
  local pid=$! t=0 done_=0
  echo $pid >> $ROOT/pgids
  while kill -0 $pid 2>/dev/null; do
    sleep 2; t=$((t+2))
    local n=0; [ -f $stats ] && n=$(wc -l < $stats)
    if [ "$n" -ge "$stop" ]; then
      if [ "${WAIT_CKPT:-0}" = 1 ]; then
        # NeMo links <ckpt>-last only once an async save is finalized; later saves may be in flight (their
        # -unfinished markers are expected): kill -9 then is exactly the preemption the resume rule must survive
        ls $ck 2>/dev/null | grep -q -- '-last$' && done_=1
      else done_=1; fi
    fi
    if [ $done_ = 1 ] || [ $t -ge $tmo ]; then
      echo "[$(el)s] KILL $name after $n logged steps (t=${t}s, reached=$done_)" | tee -a $log
      # torchrun starts its workers in their own sessions (start_new_session=True): killing torchrun's group
      # leaves them running (call 4: the worker went on finalizing and deleting checkpoints after the "kill").
      # Kill every process of this JobSpec and wait until none is left, so the kill is a real preemption.
      kill -9 -- -$pid 2>/dev/null; pkill -9 -f -- "--jobspec $js" 2>/dev/null
      local w=0; while pgrep -f -- "--jobspec $js" >/dev/null && [ $w -lt 60 ]; do sleep 1; w=$((w+1)); done
      break
    fi
  done
  wait $pid 2>/dev/null; echo "[$(el)s] END $name rc=$? steps_logged=$( [ -f $stats ] && wc -l < $stats )" | tee -a $log
  ls -la $ck 2>/dev/null | tail -5 >> $log
}
hostmem_sampler() {  # every 5 s: used host memory (MemTotal-MemAvailable) and the summed RSS of python processes
  while true; do
    echo "$(el) $(awk '/MemTotal/{t=$2}/MemAvailable/{a=$2}END{printf "%.1f", (t-a)/1048576}' /proc/meminfo) \
$(ps -C python3 -o rss= | awk '{s+=$1}END{printf "%.1f", s/1048576}')" >> $1
    sleep 5
  done
}
kill_all_runs() { for p in $(cat $ROOT/pgids 2>/dev/null); do kill -9 -- -$p 2>/dev/null; done; }
