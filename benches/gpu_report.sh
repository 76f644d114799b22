#!/usr/bin/env bash
# What the README's GPU section needs, measured on whatever GPU this machine has, in one run:
#
#   1. the adapter wgpu picks (`examples/devices`) and, where `nvidia-smi` exists, the card;
#   2. the GPU tests with LIERA_REQUIRE_GPU=1, so a missing adapter is a failure, not a skip;
#   3. `liera bench --device gpu --json`: GEMM GFLOP/s (1024³, 2048³ and the atto shapes), every atto
#      convolution kind forward/dX/dW, and the convnext_atto training steps at 3×32×32, batch 64, with their
#      launches per step (dispatches, bind groups, submits, buffers created);
#   4. the convnext_atto step at 3×224×224, batch 32, full and LieRA r8;
#   5. the same two step benchmarks on the CPU backend of the same machine, as the in-run peer;
#   6. where the GEMM uses subgroups (see `examples/devices`' line), the 32-pixel steps again with
#      LIERA_GPU_SUBGROUPS=0, the workgroup-memory GEMM, as its in-run peer;
#   7. the atto step's depthwise layers (`cargo bench --bench depthwise -- gpu`) with the tiled kernels and
#      with the sliding-window ones (LIERA_GPU_DW_TILES=1 and 0), alternating, two rounds;
#   8. the GPU kernel benchmark (`liera bench --device gpu`) with the GEMM's quad loads and with value loads
#      (LIERA_GPU_QUADS=1 and 0), alternating, two rounds;
#   9. the same benchmark and the 32-pixel steps with 128×128 and with 64×64 GEMM tiles
#      (LIERA_GPU_GEMM_TILE=128 and 64; a hardware GPU's default is 128 where its limits allow it),
#      alternating, two rounds.
#
# Usage: benches/gpu_report.sh [OUT_DIR]   (default: gpu-report/; JSON files and a summary.txt land there)
#        GPU_REPORT_QUICK=1 benches/gpu_report.sh [OUT_DIR]   a smoke run of every stage: `bench --quick`,
#        one timed step, the 224 steps at batch 4. Its figures are not the report's. On llvmpipe the full
#        run's GPU suite (stage 3) alone took over 17 minutes on a 2-core machine.
#
# A machine without the Vulkan loader: put the .deb of libvulkan1 (and, for an NVIDIA card, nothing else:
# the driver ships its ICD) in .gl/ at the repository root; they are unpacked into / first. If the loader
# finds no driver, point VK_DRIVER_FILES at the vendor's ICD JSON.
#
# The GEMM's share of the card's fp32 peak is GFLOP/s over the vendor's peak figure for that card (H100 SXM:
# 67 TFLOP/s fp32 without tensor cores), which the script prints beside the card's name for the reader to
# divide: it does not guess peaks.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-gpu-report}"
mkdir -p "$out"

if [ -d .gl ] && ls .gl/*.deb >/dev/null 2>&1; then
  for f in .gl/*.deb; do dpkg -x "$f" /; done
  ldconfig
fi

cargo build --release --bin liera --example devices
bin="${CARGO_TARGET_DIR:-target}/release"
summary="$out/summary.txt"
{
  echo "date: $(date -u +%F\ %T) UTC"
  echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), $(nproc) threads"
  if command -v nvidia-smi >/dev/null 2>&1; then
    echo "card: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader)"
  fi
  "$bin"/examples/devices 2>/dev/null
} | tee "$summary"

echo "== GPU tests (LIERA_REQUIRE_GPU=1)" | tee -a "$summary"
LIERA_REQUIRE_GPU=1 cargo test --release --test gpu_ops --test gpu_model --test gpu_faults --test shaders \
  --test generators 2>&1 | grep -E "^test result|FAILED|panicked" | tee -a "$summary"

echo "== liera bench --device gpu --json" | tee -a "$summary"
if [ -n "${GPU_REPORT_QUICK:-}" ]; then
  echo "(GPU_REPORT_QUICK: a smoke run; these figures are not the report's)" | tee -a "$summary"
  quick=(--quick) b224=4 r224=1 r32=1
else
  quick=() b224=32 r224=3 r32=5
fi
LIERA_REQUIRE_GPU=1 "$bin"/liera bench --device gpu --json "${quick[@]}" >"$out/bench-gpu.json"
LIERA_REQUIRE_GPU=1 "$bin"/liera bench --device gpu --json --step convnext_atto --kinds full,liera \
  --batch "$b224" --size 224 --reps "$r224" >"$out/step224-gpu.json"
"$bin"/liera bench --device cpu --json --step convnext_atto --kinds full,liera --batch 64 --size 32 \
  --reps "$r32" >"$out/step32-cpu.json"
"$bin"/liera bench --device cpu --json --step convnext_atto --kinds full,liera --batch "$b224" --size 224 \
  --reps "$((r224 > 2 ? 2 : r224))" >"$out/step224-cpu.json"

if "$bin"/examples/devices 2>/dev/null | grep -q "shares A by subgroup"; then
  LIERA_REQUIRE_GPU=1 LIERA_GPU_SUBGROUPS=0 "$bin"/liera bench --device gpu --json --step convnext_atto \
    --kinds full,liera --batch 64 --size 32 --reps "$r32" >"$out/step32-gpu-no-subgroups.json"
  LIERA_REQUIRE_GPU=1 "$bin"/liera bench --device gpu --json --step convnext_atto \
    --kinds full,liera --batch 64 --size 32 --reps "$r32" >"$out/step32-gpu-subgroups.json"
fi

echo "== depthwise layers, tiled (LIERA_GPU_DW_TILES=1) and sliding-window (=0), alternating" \
  | tee -a "$summary"
cargo bench --bench depthwise --no-run 2>/dev/null
for round in 1 2; do
  for tiles in 1 0; do
    echo "-- round $round, LIERA_GPU_DW_TILES=$tiles" | tee -a "$summary"
    LIERA_REQUIRE_GPU=1 LIERA_GPU_DW_TILES=$tiles cargo bench --bench depthwise -- "${quick[@]}" gpu \
      2>/dev/null | tee -a "$summary"
  done
done

for round in 1 2; do
  for q in 1 0; do
    LIERA_REQUIRE_GPU=1 LIERA_GPU_QUADS=$q "$bin"/liera bench --device gpu --json "${quick[@]}" \
      >"$out/kernels-quads$q-round$round.json"
  done
done

# (An adapter whose limits do not allow 128×128 tiles refuses LIERA_GPU_GEMM_TILE=128: then only 64 runs.)
for round in 1 2; do
  for t in 128 64; do
    LIERA_REQUIRE_GPU=1 LIERA_GPU_GEMM_TILE=$t "$bin"/liera bench --device gpu --json "${quick[@]}" \
      >"$out/kernels-tile$t-round$round.json" || { echo "-- tile $t refused" | tee -a "$summary"; \
      rm -f "$out/kernels-tile$t-round$round.json"; continue; }
    LIERA_REQUIRE_GPU=1 LIERA_GPU_GEMM_TILE=$t "$bin"/liera bench --device gpu --json --step convnext_atto \
      --kinds full,liera --batch 64 --size 32 --reps "$r32" >"$out/step32-tile$t-round$round.json"
  done
done

# One line per figure: name, median ms, GFLOP/s or images/s, dispatches and bind groups per step.
python3 - "$out" <<'EOF' | tee -a "$summary"
import json, sys, glob, os
for path in sorted(glob.glob(os.path.join(sys.argv[1], "*.json"))):
    doc = json.load(open(path))
    gemm = f"; its GEMM: {doc.get('gemm') or doc.get('cpu_gemm')}"
    print(f"-- {os.path.basename(path)}: {doc['device']}, {doc['threads']} threads{gemm}")
    for r in doc["results"]:
        rate = f"{r['gflops']:.1f} GFLOP/s" if r.get("gflops") else f"{r.get('images_per_s') or 0:.1f} images/s"
        launches = r.get("launches_per_step")
        extra = (f", {launches['dispatches']} dispatches and {launches['bind_groups']} new bind groups/step"
                 if launches else "")
        print(f"{r['name']}: {1e3 * r['median_s']:.2f} ms, {rate}{extra}")
EOF
echo "written: $out/" >&2
