#!/usr/bin/env bash
# The prepared GPU check (issue 12), for a session that is lent a GPU machine by the device tool:
#
#     run(command="bash benchmarks/device.sh", timeout_s=540)
#
# That machine installs nothing and reaches nothing: it runs the image's own python3 (with its JAX
# and CUDA, optax, flax, equinox, hypothesis), not our pins, and the project travels as source
# (PYTHONPATH). Within about 8 minutes it runs
#   1. the test suite's quick mode on the GPU (the slow reproductions deselected, like CI;
#      the notebooks, the torch comparison and the multi-process tests need packages or
#      CPU devices the machine lacks and are left out), at most 240 s;
#   2. the benchmark's GPU-sized mode: the step (a), the comparison (b) and the 100-trial search
#      all at once (c), against the optax peers on the same GPU; it writes
#      benchmarks/RESULTS-gpu.md naming the device and the JAX version.
# Both logs and RESULTS-gpu.md are copied to $OUT (when set) so they come back.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 JAXSCRATCH_COMPILE_CACHE=off
export XLA_PYTHON_CLIENT_PREALLOCATE=false
OUT="${OUT:-/tmp/jaxscratch-device}"
mkdir -p "$OUT"
PY=python3

"$PY" -c "import jax, sys; print('python', sys.version.split()[0], 'jax', jax.__version__, jax.devices())" 2>&1 | tee "$OUT/versions.txt"

# 1. The suite's quick mode on the GPU (its failures are reported, not fatal: the benchmark runs anyway).
timeout 240 "$PY" -m pytest -q -x -m "not slow" -p no:cacheprovider \
    --ignore=tests/test_notebooks.py --ignore=tests/test_torch.py --ignore=tests/test_distributed.py \
    --ignore=tests/test_sweep_devices.py tests 2>&1 | tee "$OUT/tests.log" | tail -n 30
echo "tests: exit ${PIPESTATUS[0]}" | tee -a "$OUT/tests.log"

# 2. The benchmark, GPU-sized.
timeout 270 "$PY" benchmarks/bench.py --gpu 2>&1 | tee "$OUT/bench.log" | tail -n 40
echo "bench: exit ${PIPESTATUS[0]}" | tee -a "$OUT/bench.log"
cp -f benchmarks/RESULTS-gpu.md "$OUT/" 2>/dev/null || echo "no RESULTS-gpu.md was written"
