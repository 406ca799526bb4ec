#!/usr/bin/env bash
# The GPU check, one script: the CUDA tests, bench_generate.py (fp32, bf16, bf16 + CUDA graphs at batch 1,
# 64 and 256) and the GRPO step at d16 with a group of 16; everything into one JSON and one Markdown file.
# Sized for one H100/H200 in under 8 minutes. Run it first whenever a GPU machine is available:
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]           # default: $OUT if set, else ./gpu_check
#   bash benchmarks/gpu_check.sh --smoke OUT_DIR     # CPU, tiny models, seconds: checks the script itself
#                                                    # (tests/test_gpu_check.py runs it, so it cannot rot)
# Each step's output is kept in OUT_DIR/logs/; a failing step is recorded and the others still run; the
# exit code is the number of failed steps.
set -uo pipefail

SMOKE=0
if [[ "${1:-}" == "--smoke" ]]; then SMOKE=1; shift; fi
OUT_DIR="${1:-${OUT:-gpu_check}}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python}"
mkdir -p "$OUT_DIR/logs"
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
cd "$ROOT"

if [[ $SMOKE == 1 ]]; then
  DEVICE=cpu; MODEL=tiny; BATCHES="1 2"; RUNS=1; MM=0.3
  GRPO=(--depth 2 --resolution 32 --batch-size 1 --group-size 2 --steps 1 --modes batched --device cpu)
  TESTS=(tests/test_fastpath.py -k "cuda or int8")
else
  DEVICE=cuda; MODEL=d20; BATCHES="1 64 256"; RUNS=3; MM=3
  GRPO=(--depth 16 --width 1024 --resolution 256 --batch-size 1 --group-size 16 --steps 3 --modes batched,serial --precision bf16 --device cuda)
  TESTS=(tests/ -k "cuda" -p no:cacheprovider)
fi

FAILED=0
STEPS=()
step() {  # step NAME CMD...: run, log, record the status and the seconds
  local name="$1"; shift
  local t0=$SECONDS
  echo "== $name: $*" | tee -a "$OUT_DIR/logs/commands.txt"
  "$@" > "$OUT_DIR/logs/$name.log" 2>&1
  local rc=$?
  [[ $rc != 0 ]] && FAILED=$((FAILED + 1)) && tail -20 "$OUT_DIR/logs/$name.log"
  STEPS+=("$name:$rc:$((SECONDS - t0))")
  echo "   -> exit $rc, $((SECONDS - t0)) s"
}

step environment "$PY" -c "import torch, platform; print(torch.__version__, torch.version.cuda, platform.python_version()); print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no CUDA device')"
[[ $SMOKE == 0 ]] && step nvidia_smi nvidia-smi
step cuda_tests "$PY" -m pytest -q -rs "${TESTS[@]}"
for cfg in "fp32:" "bf16:" "bf16:--cuda-graphs"; do
  dt="${cfg%%:*}"; extra="${cfg#*:}"
  name="generate_${dt}${extra:+_graphs}"
  # shellcheck disable=SC2086
  step "$name" "$PY" benchmarks/bench_generate.py --device "$DEVICE" --model "$MODEL" --dtypes "$dt" $extra \
    --batch-sizes $BATCHES --paths ours --runs "$RUNS" --warmup 1 --matmul-seconds "$MM" --json "$OUT_DIR/$name.json"
done
step grpo_step "$PY" benchmarks/bench_grpo_step.py "${GRPO[@]}" --out "$OUT_DIR/grpo_runs" --json "$OUT_DIR/grpo_step.json"

"$PY" - "$OUT_DIR" "$SMOKE" "${STEPS[@]}" <<'PYEOF'
import json, sys
from pathlib import Path

out, smoke, steps = Path(sys.argv[1]), sys.argv[2] == "1", sys.argv[3:]
doc = {"smoke": smoke, "steps": [], "generate": {}, "grpo_step": None}
for s in steps:
    name, rc, sec = s.rsplit(":", 2)
    doc["steps"].append({"name": name, "exit": int(rc), "seconds": int(sec)})
for f in sorted(out.glob("generate_*.json")):
    doc["generate"][f.stem] = json.loads(f.read_text())
g = out / "grpo_step.json"
if g.is_file():
    doc["grpo_step"] = json.loads(g.read_text())
(out / "gpu_check.json").write_text(json.dumps(doc, indent=1))
lines = ["# GPU check" + (" (smoke: CPU, tiny models)" if smoke else ""), "", "| step | exit | s |", "|---|---:|---:|"]
lines += [f"| {s['name']} | {s['exit']} | {s['seconds']} |" for s in doc["steps"]]
lines += ["", "| run | batch | s / sample | images / s | peak MiB |", "|---|---:|---:|---:|---:|"]
for name, g in doc["generate"].items():
    for r in g.get("rows", []):
        lines.append(f"| {name} | {r['batch']} | {r['s_per_sample']:.4f} | {r['images_per_s']:.2f} | {r['peak_mib'] or 0:.0f} |")
if doc["grpo_step"]:
    lines += ["", "GRPO step: see gpu_check.json (grpo_step.rows)"]
(out / "gpu_check.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
PYEOF
echo "results: $OUT_DIR/gpu_check.json, $OUT_DIR/gpu_check.md; failed steps: $FAILED"
exit "$FAILED"
