#!/usr/bin/env bash
# One-GPU check of the GPU paths, <= 8 minutes on an H100-class GPU (each step has its own timeout):
#   1 GPU-marked tests (pytest -m gpu)
#   2 a short d12 bf16 pretrain, eager and with --compile: tok/s and MFU (dense bf16 peak of the GPU,
#     pretrain.PEAK_FLOPS; "n/a" for a GPU not in that table)
#   3 one FSDP2 run on 1 GPU under torchrun (NCCL init, sharded params, optimizer, checkpoint)
#   4 KV-cache decode vs transformers generate() (bench/generate.py, d12, fp32)
# then a summary table (also written to $RUN/gpu_check/summary.md). Without a CUDA GPU it says so
# and exits 0. Usage: bench/gpu_check.sh   (PYTHON=... to choose the interpreter, RUN=... the run dir)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  echo "gpu_check: no CUDA GPU available (torch.cuda.is_available() is False); nothing to check"
  exit 0
fi
GPU=$("$PY" -c 'import torch; print(torch.cuda.get_device_name(0))')
RUN=${RUN:-runs/gpu_check}
OUT=$RUN/gpu_check
mkdir -p "$OUT"
ROWS=()
T_ALL=$(date +%s)

step() {  # step NAME TIMEOUT_S CMD... : run, log to $OUT/NAME.log, remember status and seconds
  local name=$1 limit=$2; shift 2
  local t0=$(date +%s)
  echo "== $name (timeout ${limit}s)"
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  LAST_STATUS=$([ $rc -eq 0 ] && echo ok || { [ $rc -eq 124 ] && echo TIMEOUT || echo "FAILED rc=$rc"; })
  LAST_SECONDS=$(( $(date +%s) - t0 ))
  [ $rc -eq 0 ] || tail -n 5 "$OUT/$name.log"
}

speed() {  # mean tok/s and last MFU over the last 5 logged steps of a pretrain log
  grep -E '\| tok/s ' "$1" | tail -n 5 | sed -E 's/.*tok\/s ([0-9,]+) \| mfu ([^ ]+).*/\1 \2/' | tr -d , |
    awk '{s += $1; m = $2; n++} END {if (n) printf "%.0f tok/s, MFU %s", s / n, m; else printf "no step lines"}'
}

# data: the default speedrun's world -> crawl -> curated docs -> tokenizer -> shards (CPU, ~20 s)
step data 180 "$PY" -m chatforge speedrun --run "$RUN" --skip pretrain,sample,sft,rl
ROWS+=("| data (speedrun stages up to shards) | $LAST_STATUS | $LAST_SECONDS | |")

step tests 120 "$PY" -m pytest -m gpu -q -p no:randomly tests
ROWS+=("| GPU-marked tests | $LAST_STATUS | $LAST_SECONDS | $(tail -n 1 "$OUT/tests.log") |")

PRE=(-m chatforge pretrain --run "$RUN" --depth 12 --seq-len 1024 --device-batch-size 16 --max-steps 30
     --eval-every 0 --eval-tokens 32768 --sample-tokens 8 --dtype bfloat16 --device cuda)
step pretrain_eager 150 "$PY" "${PRE[@]}"
ROWS+=("| d12 bf16 pretrain, eager (30 steps x 16k tok) | $LAST_STATUS | $LAST_SECONDS | $(speed "$OUT/pretrain_eager.log") |")
step pretrain_compile 210 "$PY" "${PRE[@]}" --compile
ROWS+=("| d12 bf16 pretrain, --compile | $LAST_STATUS | $LAST_SECONDS | $(speed "$OUT/pretrain_compile.log") |")

step fsdp 120 "$PY" -m torch.distributed.run --standalone --nproc_per_node=1 "${PRE[@]}" --max-steps 5 --fsdp
ROWS+=("| FSDP2, 1 GPU, torchrun (5 steps) | $LAST_STATUS | $LAST_SECONDS | $(speed "$OUT/fsdp.log") |")

step decode 120 "$PY" bench/generate.py --device cuda --depth 12 --new 256 --runs 3 --naive-runs 1
ROWS+=("| KV decode d12, 256 tokens | $LAST_STATUS | $LAST_SECONDS | $(grep -E '^engine' "$OUT/decode.log" | awk '{print $6" tok/s, "$8}') vs transformers |")

{
  echo "## gpu_check on $GPU ($(date -u +%Y-%m-%dT%H:%MZ), $(( $(date +%s) - T_ALL )) s)"
  echo
  echo "| step | status | seconds | figure |"
  echo "|---|---|---:|---|"
  printf '%s\n' "${ROWS[@]}"
} | tee "$OUT/summary.md"
