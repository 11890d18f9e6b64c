#!/usr/bin/env bash
# Runs ON the lent GPU machine (carried in .device/ by device/prepare.sh), from the project
# root: the measurements the open issues wait on, each step under its own timeout, beside
# PyTorch on the same GPU (device/torch_bench.py), every log and JSON into $OUT as it comes.
#
#   bash .device/run.sh linear   # issue 13: GPU tests, the linear head vs torch (~5 min)
#   bash .device/run.sh short    # issue 15: short rows and (N, C, d…) vs torch and burn, long rows (~5 min)
#   bash .device/run.sh all      # both (more than one device call allows: two calls are safer)
#
# XENT_DEVICE_DRY=1 runs the same steps here on tiny shapes (llvmpipe; torch steps skipped
# where torch is missing), to check the script before spending device time.
set -u
phase=${1:-all}
# The whole run's budget: a device call runs at most 600 s and the session has about 900.
deadline=$((SECONDS + ${XENT_DEVICE_BUDGET:-420}))
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
D=.device
dry=${XENT_DEVICE_DRY:-}
for f in "$D"/*.xz "$D"/tests/*.xz; do [ -e "$f" ] && xz -d -f "$f"; done
chmod +x "$D"/xent "$D"/bench_vs_burn "$D"/tests/* 2>/dev/null
if [ -z "$dry" ]; then
  for f in "$D"/gl/*.deb; do dpkg -x "$f" /; done; ldconfig
  export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
  export __EGL_VENDOR_LIBRARY_FILENAMES=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
fi
export XENT_REQUIRE_GPU=1 WGPU_BACKEND=${WGPU_BACKEND:-vulkan} RUST_BACKTRACE=1

# step NAME SECONDS COMMAND...: the command's output into $OUT/NAME.txt, its tail here; its
# limit no later than the run's deadline, and skipped with less than 10 s left.
step() {
  local name=$1 limit=$2; shift 2
  local left=$((deadline - SECONDS))
  [ "$left" -lt "$limit" ] && limit=$left
  if [ "$limit" -lt 10 ]; then echo "== $name: skipped (the run's budget is spent)"; return; fi
  echo "== $name ($(date +%T), limit ${limit}s)"
  timeout -k 5 "$limit" "$@" > "$OUT/$name.txt" 2>&1
  echo "   exit $?"
  tail -n 25 "$OUT/$name.txt"
}
torch=(python3 "$D/torch_bench.py")

# Shapes: the issues' own, or tiny ones for a dry run.
if [ -z "$dry" ]; then
  heads=(--head 8192x768x50257); big_head=(--head 4096x4096x128256)
  short=(--short); iters=5
  burn_shapes=1048576x2,1048576x10,262144x100,65536x1000,16x21x512x512
  long=(--shape 8192x128256 --shape 16384x32000 --shape 65536x1000)
else
  heads=(--head 64x32x500); big_head=(--head 32x64x700)
  short=(--shape 4096x2 --shape 1024x100 --shape 2x21x32x32); iters=1
  burn_shapes=4096x2,2x21x32x32
  long=(--shape 64x5000)
fi

step adapter 30 bash -c "nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv; $D/xent devices"

# Most wanted first in each phase: what comes back when the budget runs out is what ran.
if [ "$phase" = linear ] || [ "$phase" = all ]; then
  # Issue 13: the tile GEMM (gpu-product) as a fraction of the GPU's f32 peak and of cuBLAS,
  # the fused and chunked strategies against the materialized baseline.
  step linear 150 "$D"/xent bench --linear --device gpu "${heads[@]}" --dtype f32 --dtype bf16 \
    --iters 3 --json "$OUT/linear.json" --no-plot
  step torch-linear 90 "${torch[@]}" linear "${heads[@]}" "${big_head[@]}"
  step tests-linear 90 "$D"/tests/linear --test-threads 4
  step linear-ignored 60 "$D"/xent bench --linear --device gpu "${heads[@]}" --ignored 0.85 \
    --dtype bf16 --iters 3 --json "$OUT/linear-ignored.json" --no-plot
  step linear-llama 120 "$D"/xent bench --linear --device gpu "${big_head[@]}" --dtype bf16 \
    --iters 2 --json "$OUT/linear-llama.json" --no-plot
fi

if [ "$phase" = short ] || [ "$phase" = all ]; then
  # Issue 15: short rows and the (N, C, d…) layout, beside torch and burn-wgpu.
  step short 120 "$D"/xent bench --device gpu "${short[@]}" --dtype f32 --dtype bf16 \
    --iters "$iters" --json "$OUT/short.json" --no-plot
  step torch-short 60 "${torch[@]}" short "${short[@]}"
  step burn 90 "$D"/bench_vs_burn --runs "$iters" --shapes "$burn_shapes"
  step long 60 "$D"/xent bench --device gpu "${long[@]}" --dtype f32 --dtype bf16 \
    --iters "$iters" --json "$OUT/long.json" --no-plot
  step torch-long 60 "${torch[@]}" long "${long[@]}"
  for t in "$D"/tests/*; do
    case "$t" in */linear) continue ;; esac
    step "tests-$(basename "$t")" 30 "$t" --test-threads 4
  done
fi
echo "== done ($(date +%T))"
