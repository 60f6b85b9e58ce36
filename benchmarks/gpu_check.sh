#!/usr/bin/env bash
# The GPU check: one prepared run on a machine with a GPU, in about five minutes; writes
# results/gpu_check.md (docs/gpu.md). From the repository root:
#
#     benchmarks/gpu_check.sh
#
# Needs python3 with a CUDA build of PyTorch, NumPy, h5py, scikit-learn and pytest. If mpi4py is not
# importable there (or a .whl/ folder exists), it makes a venv that sees python3's packages and installs
# the wheels in .whl/ into it, for a machine without the package index. Fetch them elsewhere with
#     pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#         --platform manylinux_2_28_x86_64 --platform manylinux1_x86_64 -d .whl mpich mpi4py pytest-mpi
# Every step has a time limit; a step that fails is reported and the check goes on.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${GPU_CHECK_OUT:-results/gpu_check.md}
LOG=$(mktemp -d)
PY=python3
if [ -d .whl ] || ! python3 -c "import mpi4py" 2>/dev/null; then
  V=${GPU_CHECK_VENV:-/tmp/hpcps-gpu-venv}
  python3 -m venv "$V"
  python3 -c 'import site; print(site.getsitepackages()[0])' > "$("$V/bin/python" -c 'import site; print(site.getsitepackages()[0])')/image.pth"
  "$V/bin/pip" install --quiet --no-index --no-deps .whl/*.whl
  PY="$V/bin/python"
  export PATH="$V/bin:$PATH"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
MPIEXEC=$(dirname "$(command -v "$PY")")/mpiexec
[ -x "$MPIEXEC" ] || MPIEXEC=mpiexec
PASS=0; FAIL=0

step() {   # step TITLE SECONDS CMD...: run, keep its output, note its status
  local title=$1 limit=$2; shift 2
  local t0=$SECONDS
  timeout "$limit" "$@" > "$LOG/out" 2>&1
  local rc=$?
  if [ $rc -eq 0 ]; then PASS=$((PASS + 1)); else FAIL=$((FAIL + 1)); fi
  {
    echo "### $title"; echo
    echo "\`$*\` (exit $rc, $((SECONDS - t0)) s)"; echo; echo '```'; tail -n 25 "$LOG/out"; echo '```'; echo
  } >> "$LOG/report"
  return $rc
}

{
  echo "# GPU check"; echo
  echo "Command: \`benchmarks/gpu_check.sh\`; commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' plus uncommitted changes'); $(date -u '+%Y-%m-%d %H:%M UTC')."; echo
  echo '```'
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | head -n 4
  "$PY" -c 'import torch, mpi4py; from mpi4py import MPI; print("torch", torch.__version__, "cuda", torch.cuda.is_available(), "| mpi4py", mpi4py.__version__, "|", MPI.Get_library_version().splitlines()[0])' 2>&1
  echo '```'; echo
} > "$LOG/report"

# 1. Exactness on the device: the MPI exactness tests with the workers on the GPU.
for n in 3 5; do
  step "exactness, staged, $n ranks" 150 env HPCPS_TEST_DEVICE=cuda HPCPS_GPU_TRANSPORT=staged \
    "$MPIEXEC" -n $n "$PY" -m pytest -q --with-mpi -p no:cacheprovider tests/mpi/test_exchange.py -k aggregate_exactly
done
if "$PY" -c 'from hpcps.comm.buffers import mpi_is_cuda_aware; raise SystemExit(0 if mpi_is_cuda_aware() else 1)'; then
  step "exactness, direct, 3 ranks" 150 env HPCPS_TEST_DEVICE=cuda HPCPS_GPU_TRANSPORT=direct \
    "$MPIEXEC" -n 3 "$PY" -m pytest -q --with-mpi -p no:cacheprovider tests/mpi/test_exchange.py -k aggregate_exactly
else
  # This MPI cannot read device memory: asking for direct must be one clear error, exit status 2.
  step "direct refused on an MPI that cannot read device memory (expect exit 2)" 120 bash -c \
    "\"$MPIEXEC\" -n 2 \"$PY\" -m hpcps.train --device cuda --gpu-transport direct --no-trace --iterations 2; test \$? -eq 2"
fi

# 2. Every workload trains on the device (the default command first).
for job in jobs/default.toml jobs/cifar.toml jobs/charlm.toml; do
  [ -f "$job" ] || continue
  step "train $job on the GPU, 2 ranks" 150 "$MPIEXEC" -n 2 "$PY" -m hpcps.train --job "$job" --device cuda \
    --iterations 40 --no-trace
done

# 3. One process against plain PyTorch; four processes sharing the GPU against DDP (gloo on CUDA tensors).
for job in jobs/cifar.toml jobs/cifar-wide.toml; do
  step "1 process: hpcps against plain PyTorch, $job" 150 "$MPIEXEC" -n 1 "$PY" benchmarks/gpu_single.py \
    --job "$job" --rounds 3 --warmup 10 --iterations 50
done
step "4 processes on one GPU, 78k parameters" 200 "$PY" benchmarks/ps_vs_ddp.py --device cuda --job jobs/cifar.toml \
  --sittings 1 --rounds 3 --warmup 10 --iterations 40 --window 10 --out "$LOG/bench"
step "4 processes on one GPU, 11M parameters" 200 "$PY" benchmarks/ps_vs_ddp.py --device cuda \
  --job jobs/cifar-wide.toml --sittings 1 --rounds 3 --warmup 5 --iterations 20 --window 5 --out "$LOG/bench"

{ echo "**$PASS steps passed, $FAIL failed.** Targets: 1 process at least 0.95x plain PyTorch; 4 processes at"
  echo "least 1.0x DDP at 78k and at 11M parameters (the ratio lines above)."; echo; cat "$LOG/report"; } > "$OUT"
for f in "$LOG"/bench/*.md; do [ -f "$f" ] && { echo; cat "$f"; } >> "$OUT"; done
echo "wrote $OUT ($PASS passed, $FAIL failed)"
