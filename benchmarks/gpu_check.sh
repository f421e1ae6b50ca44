#!/usr/bin/env bash
# One GPU session, most wanted first: the Pallas kernels compiled (their equivalence tests),
# then the selective-scan benchmark at the reference shape (b=4, l=8192, d=1536, n=16), every impl
# with pallas, fp32 and bf16; a Mamba LM trained 300 steps with impl=chunked and impl=pallas (loss
# curves, plot); then the compiled equivalence tests of ops/layers/models, the linear-scan
# benchmark at b=8, l=16384, d=512 (and d=256, S5-like), SSD at b=4, l=8192, h=24, p=64, n 64/128,
# chunk 256, and the S4 vs S4D kernel benchmark at h=256, n 64/256, l 1024/16384.
# Needs only jax/flax/optax/orbax/hypothesis/pytest/matplotlib (no hydra, grain or tfds).
# Usage: OUT=<dir> bash benchmarks/gpu_check.sh
set -uo pipefail
export PYTHONPATH="$PWD" PYTHONUNBUFFERED=1
OUT="${OUT:-outputs/gpu}"
mkdir -p "$OUT"
python3 -c "import jax; print(jax.__version__, jax.devices())" 2>&1 | tee "$OUT/device.txt"
python3 -m pytest -q -p no:cacheprovider tests/ops/test_pallas_*.py tests/ops/test_selective_scan.py \
  tests/ops/test_ssd.py tests/ops/test_linear_scan.py -k pallas 2>&1 | tee "$OUT/pytest_pallas.log" | tail -15
for dtype in float32 bfloat16; do
  python3 -m benchmarks.selective_scan --shapes reference --dtype "$dtype" --out "$OUT/$dtype" \
    2>&1 | tee "$OUT/bench_$dtype.log"
done
python3 -m benchmarks.impl_loss_curves --impls chunked pallas --steps 300 --out "$OUT" \
  2>&1 | tee "$OUT/impl_loss_curves.log"
python3 -m pytest -q -p no:cacheprovider tests/ops tests/layers tests/models tests/test_hippo.py \
  2>&1 | tee "$OUT/pytest_gpu.log" | tail -25
for dtype in float32 bfloat16; do
  python3 -m benchmarks.linear_scan --shapes reference --dtype "$dtype" --out "$OUT/$dtype" \
    2>&1 | tee "$OUT/bench_linear_scan_$dtype.log"
  python3 -m benchmarks.ssd --shapes reference --impls reference chunked pallas --dtype "$dtype" \
    --out "$OUT/$dtype" 2>&1 | tee "$OUT/bench_ssd_$dtype.log"
done
python3 -m benchmarks.kernels --shapes reference --out "$OUT/float32" \
  2>&1 | tee "$OUT/bench_kernels.log"
python3 -m benchmarks.train_step --shapes gpu --out "$OUT" 2>&1 | tee "$OUT/bench_train_step.log"
