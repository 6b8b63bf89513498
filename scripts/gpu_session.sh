#!/usr/bin/env bash
# The whole GPU validation in ONE device call of at most 9 minutes (a GPU machine comes rarely and briefly).
# Run from the repository root on the GPU machine; every phase writes its log (and the benchmarks their
# records) under $OUT as it finishes, so whatever ran before a cut-off comes back.
#
#   bash scripts/gpu_session.sh              # everything below, in this order (most valuable first)
#   bash scripts/gpu_session.sh check test   # only the named phases, in the order given
#
# Phases: build (sm_90a, MAX_JOBS=16, in place: installs nothing, so the machine's torch stays), check
# (python -m wslfast.check), test (the CUDA tests), emu-compare (the emulated kernel tests' cases on this GPU
# and in emulation, compared: scripts/emu_gpu_compare.py), sanitize (compute-sanitizer memcheck, then
# racecheck, over scripts/cuda_kernel_tour.py), bench-ce (soft-CE at the goal shapes), bench-conv-4 (the 32x4d stage
# shapes), bench-step (the training step), profile (the step profile); bench-conv-8, bench-conv-16 on request.
# Each phase has its own time box, and all of them share one deadline ($BUDGET seconds, default 520), so the
# call ends in time even when a phase runs long. Exit status: the number of phases that failed or were cut.
# Benchmarks append to $OUT/results.json: copy its records into benchmarks/results/h200.json and commit them.
set -uo pipefail

OUT=${OUT:-/tmp/wslfast-gpu}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export MAX_JOBS=${MAX_JOBS:-16} WSLFAST_CUDA_ARCHS=${WSLFAST_CUDA_ARCHS:-90a}
SANITIZER=${SANITIZER:-$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)}
BUDGET=${BUDGET:-520}
deadline=$((SECONDS + BUDGET))
failed=0
summary="$OUT/summary.txt"
: > "$summary"

say() { echo "$*" | tee -a "$summary"; }

phase() {  # phase NAME TIMEOUT_S COMMAND...: runs it (cut at the shared deadline), log in $OUT/NAME.log
  local name=$1 limit=$2
  shift 2
  local left=$((deadline - SECONDS))
  if [ "$left" -lt 15 ]; then
    say "[$name] skipped: the ${BUDGET} s budget is spent"
    failed=$((failed + 1))
    return
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  local start=$SECONDS
  timeout --kill-after=5 "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  say "[$name] rc=$rc in $((SECONDS - start)) s (box $limit s; log: $name.log)"
  if [ $rc -ne 0 ]; then
    failed=$((failed + 1))
    tail -n 25 "$OUT/$name.log"
  fi
}

steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(build check test emu-compare sanitize bench-ce bench-conv-4 bench-step profile)

for step in "${steps[@]}"; do
  case "$step" in
    build)
      # In place, no pip: nothing can replace the machine's torch (requirements.txt pins another version).
      "$PY" -c "import torch; print(torch.__version__)" > "$OUT/torch_before.txt" 2>&1
      phase build 300 "$PY" setup.py build_ext --inplace
      "$PY" -c "import wslfast, json; print(json.dumps(wslfast.build_info()))" > "$OUT/build_info.json" 2>&1
      cat "$OUT/build_info.json"
      ;;
    check)
      phase check 90 "$PY" -m wslfast.check
      [ -f "$OUT/check.log" ] && cat "$OUT/check.log"
      ;;
    test)
      phase test 150 "$PY" -m pytest -q -p no:cacheprovider -m cuda tests
      [ -f "$OUT/test.log" ] && tail -n 3 "$OUT/test.log"
      ;;
    emu-compare)
      # Every launcher on the cases the CPU tests run in emulation (tests/ops/kernel_emu), built with nvcc
      # (reusing the build phase's kernel objects) and with g++, checked against float64 on both and
      # compared output by output: the first GPU run of them says where the emulator and the GPU differ.
      phase emu_compare 120 "$PY" scripts/emu_gpu_compare.py --out "$OUT/emu_compare"
      [ -f "$OUT/emu_compare/compare.txt" ] && head -n 20 "$OUT/emu_compare/compare.txt"
      ;;
    sanitize)
      # Every kernel once on small inputs: memcheck (out-of-bounds, the broken-CSR case included), then
      # racecheck for the shared-memory kernels (reductions, tensor-core tiles).
      phase memcheck 90 "$SANITIZER" --tool memcheck --error-exitcode 9 "$PY" scripts/cuda_kernel_tour.py
      phase racecheck 90 "$SANITIZER" --tool racecheck --error-exitcode 9 "$PY" scripts/cuda_kernel_tour.py
      ;;
    bench-ce)
      phase bench_soft_ce 60 "$PY" benchmarks/bench_soft_ce.py --device cuda --goal --no-compile \
        --out "$OUT/results.json"
      ;;
    bench-conv-4|bench-conv-8|bench-conv-16)
      width=${step#bench-conv-}
      extra=(--no-step)
      [ "$width" = 8 ] && extra=()
      phase "bench_conv_bn_$width" 70 "$PY" benchmarks/bench_conv_bn.py --device cuda --widths "$width" \
        --no-compile "${extra[@]}" --out "$OUT/results.json"
      ;;
    bench-step)
      # The training step without data or DALI (the GPU machine has none): model + loss + SGD.
      phase bench_train_step 70 "$PY" benchmarks/bench_train_step.py --loader synthetic --device cuda \
        --arch resnext101_32x8d --batch-size 64 --image-size 224 --amp bf16 --classes 17000 --steps 10 \
        --rounds 1 --out "$OUT/results.json"
      ;;
    profile)
      phase profile_step 45 "$PY" benchmarks/profile_step.py --device cuda --out "$OUT/results.json" \
        --trace "$OUT/step_trace.json"
      ;;
    *)
      echo "unknown phase '$step' (build, check, test, emu-compare, sanitize, bench-ce, bench-conv-{4,8,16}," \
        "bench-step, profile)" >&2
      failed=$((failed + 1))
      ;;
  esac
done
if [ -f "$OUT/torch_before.txt" ]; then
  "$PY" -c "import torch; print(torch.__version__)" > "$OUT/torch_after.txt" 2>&1
  cmp -s "$OUT/torch_before.txt" "$OUT/torch_after.txt" || { say "torch changed during the session!"; failed=$((failed + 1)); }
fi
say "done in $SECONDS s; $failed phase(s) failed or were cut"
exit $failed
