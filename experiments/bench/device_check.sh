#!/usr/bin/env bash
# On a machine with one NVIDIA H100/H200 (the device tool's H200): measure real step time, throughput, MFU and
# peak memory of the 1B-shaped full fine-tuning step (DPO) and the BFPO 7B step (down_proj only), each in a fresh
# process, and print them under the planner's projection for the same configuration. About 6-8 minutes.
#   bash experiments/bench/device_check.sh [target]     (target: h200x1 (default) or h100x1)
# Output: runs/device_check/*.json and a table on stdout.
set -uo pipefail
cd "$(dirname "$0")/../.."
target=${1:-h200x1}
out=runs/device_check
mkdir -p "$out"
py=${PYTHON:-python3}
one="--run.mesh.data 1 --run.mesh.fsdp 1 --run.mesh.tensor 1"
declare -A variants=(
  [dpo_1b]="--preset mistral-7b -- --objective dpo --trainable= --model.architecture llama3_2_1b --model.param-dtype float32 --streams.0.batch-size 8 --streams.1.batch-size 8 --run.grad-accum 1 $one"
  [bfpo_7b]="--preset mistral-7b -- --streams.0.batch-size 4 --streams.1.batch-size 4 --run.grad-accum 1 $one"
)
for name in dpo_1b bfpo_7b; do
  args=${variants[$name]}
  # The projection: the compile-only CUDA target, on the CPU.
  JAX_PLATFORMS=cpu timeout 240 $py -m experiments.plan --launcher bfpo_train --target "$target" --no-advice \
      --json "$out/$name.plan.json" ${args} > "$out/$name.plan.txt" 2>&1 || echo "plan $name failed (see $out/$name.plan.txt)"
  # The measurement: a fresh process on the GPU.
  timeout 240 $py -m experiments.bench.device_step --launcher bfpo_train --target "$target" ${args} \
      > "$out/$name.measured.txt" 2>&1 || echo "measurement $name failed (see $out/$name.measured.txt)"
  tail -n 1 "$out/$name.measured.txt" > "$out/$name.measured.json"
done
$py - "$out" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
print(f"{'variant':10} {'':10} {'step ms':>9} {'tokens/s':>11} {'MFU':>6} {'GiB/device':>11}")
for name in ("dpo_1b", "bfpo_7b"):
    try:
        p = json.loads((out / f"{name}.plan.json").read_text())
        print(f"{name:10} {'projected':10} {p['projected']['step_s']*1e3:9.1f} {p['projected']['tokens_per_s']:11,.0f} "
              f"{p['projected']['mfu']*100:5.1f}% {p['memory']['total']/2**30:11.2f}")
    except Exception as e:
        print(f"{name:10} projected: unavailable ({e})")
    try:
        m = json.loads((out / f"{name}.measured.json").read_text())
        peak = m['peak_bytes_in_use'] / 2**30 if m.get('peak_bytes_in_use') else float('nan')
        print(f"{name:10} {'measured':10} {m['step_s']*1e3:9.1f} {m['tokens_per_s']:11,.0f} {m['mfu']*100:5.1f}% {peak:11.2f}")
    except Exception as e:
        print(f"{name:10} measured: unavailable ({e})")
PY
