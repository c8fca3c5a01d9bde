#!/usr/bin/env bash
# The fused LoRA backward side by side with PyTorch's explicit matmuls (issue 18, item 5), run from the
# repository root:   bench/peers/lora-backward-vs-torch.sh [ROUNDS]
# Each round runs, at every thread count, the PyTorch side (lora_backward_torch.py) and the project side
# (`peft bench lora`), in alternating order; the summary gives, per op, shape and thread count, the
# median over rounds of torch_ms / peft_ms from the same round (> 1 = the project is faster).
# Needs Debian's python3-torch and libdnnl2 (torch's fp32 sgemm_ goes to oneDNN through sgemm_dnnl.c,
# built here) and gcc. Settings: THREADS="1 2", SHAPES="256x768x2048r16 ...", REPEATS=15, PY=/usr/bin/python3,
# WORK=/tmp/peft-lora-vs-torch (build outputs and results, outside the repository).
set -euo pipefail
ROUNDS=${1:-3}
THREADS=${THREADS:-1 2}
SHAPES=${SHAPES:-256x768x768r16 256x768x2048r16 256x2048x768r16 512x4096x4096r16 2048x4096x4096r16}
REPEATS=${REPEATS:-15}
PY=${PY:-/usr/bin/python3}
WORK=${WORK:-/tmp/peft-lora-vs-torch}
HERE=$(cd "$(dirname "$0")" && pwd)
[ -d src/PeftKernels ] || { echo "run from the repository root" >&2; exit 2; }
$PY -c 'import torch' || { echo "error: $PY cannot import torch (apt-get install python3-torch)" >&2; exit 2; }
mkdir -p "$WORK"
gcc -O2 -shared -fPIC -o "$WORK/libsgemm_dnnl.so" "$HERE/sgemm_dnnl.c" -l:libdnnl.so.2
dotnet build tools/PeftKernels.Cli -c Release -o "$WORK/cli" >"$WORK/build.log" 2>&1 || { tail -20 "$WORK/build.log" >&2; exit 1; }
OUT=$WORK/results-$(date -u +%Y%m%dT%H%M%S).txt
echo "# $(lscpu | sed -n 's/^Model name: *//p'); $(nproc) processors; commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'); load $(cut -d' ' -f1-3 /proc/loadavg)" | tee "$OUT"
for round in $(seq 1 "$ROUNDS"); do
  for t in $THREADS; do
    torch_run() { LD_PRELOAD=$WORK/libsgemm_dnnl.so $PY "$HERE/lora_backward_torch.py" --threads "$t" --repeats "$REPEATS" --shape $SHAPES; }
    peft_run() { dotnet "$WORK/cli/peft.dll" bench lora --threads "$t" --repeats "$REPEATS" --shape $SHAPES; }
    if (( round % 2 )); then order="torch_run peft_run"; else order="peft_run torch_run"; fi
    for f in $order; do $f | sed "s/^RESULT /RESULT round=$round /" | tee -a "$OUT"; done
  done
done
$PY - "$OUT" <<'PY'
import re, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    if line.startswith("RESULT"):
        kv = dict(p.split("=", 1) for p in line.split()[1:])
        rows[(kv["round"], kv["side"], kv["op"], kv["threads"], kv["shape"])] = float(kv["median_ms"])
keys = sorted({(op, t, s) for (_, side, op, t, s) in rows if side == "torch"}, key=lambda k: (k[0], int(k[1]), k[2]))
print(f"{'op':10} {'thr':>3} {'shape':20} {'torch ms':>9} {'peft ms':>9} {'torch/peft':>10} {'rounds range':>14}")
for op, t, s in keys:
    rs = sorted({r for (r, side, o, tt, ss) in rows if (o, tt, ss) == (op, t, s)})
    pairs = [(rows[(r, "torch", op, t, s)], rows[(r, "peft", op, t, s)]) for r in rs
             if (r, "torch", op, t, s) in rows and (r, "peft", op, t, s) in rows]
    if not pairs:
        continue
    ratios = [a / b for a, b in pairs]
    print(f"{op:10} {t:>3} {s:20} {statistics.median(a for a, _ in pairs):9.2f} {statistics.median(b for _, b in pairs):9.2f} "
          f"{statistics.median(ratios):10.3f} {min(ratios):6.3f}-{max(ratios):.3f}")
PY
echo "results: $OUT"
