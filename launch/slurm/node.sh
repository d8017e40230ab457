#!/bin/bash
# One srun task per node: start `accelerate launch` for this node's processes and pass
# USR1/TERM on to the training workers themselves. (Signalling the launcher instead makes
# torch-elastic tear the workers down in the middle of a collective.)
set -uo pipefail
GPUS=${SLURM_GPUS_ON_NODE:-0}
if [ "$GPUS" -gt 0 ]; then
  PER_NODE=$GPUS
else
  PER_NODE=${PROCS_PER_NODE:-1}
  export ACCELERATE_USE_CPU=1  # with --multi_gpu: N CPU processes (gloo), not a silent 1
fi
NPROC=$((PER_NODE * NUM_NODES))
echo "node $SLURM_NODEID ($(hostname -s)): $PER_NODE process(es) of $NPROC, $([ "$GPUS" -gt 0 ] && echo "$GPUS GPU(s)" || echo CPU)"
if [ "$NPROC" -gt 1 ]; then
  TOPOLOGY=(--multi_gpu --num_machines "$NUM_NODES" --machine_rank "$SLURM_NODEID"
    --num_processes "$NPROC" --main_process_ip "$MAIN_ADDR" --main_process_port "$MAIN_PORT")
else
  TOPOLOGY=(--num_processes 1 --num_machines 1)  # accelerate refuses --multi_gpu for one
fi
"$DIFFDENOISE_PYTHON" -m accelerate.commands.launch "${TOPOLOGY[@]}" \
  --mixed_precision no --dynamo_backend no launch/train.py "$@" &
LAUNCHER=$!
forward() { pkill "-$1" -P "$LAUNCHER" || true; }
trap 'forward USR1' USR1
trap 'forward TERM' TERM
while true; do  # a trapped signal interrupts `wait`; keep waiting for the real exit code
  wait "$LAUNCHER"
  status=$?
  kill -0 "$LAUNCHER" 2>/dev/null || break
done
exit "$status"
