#!/usr/bin/env bash
# The GPU validation of issue 6 in a few device calls (../shared/GPU.md: 30 minutes of device time, at
# most 10 per call, a bare machine whenever it went cold). Run from the repository root on the GPU
# machine; every phase writes its log and results under $OUT, which the device tool brings back.
#
#   bash scripts/gpu_session.sh build test sanitize           # call 1: build, CUDA tests, compute-sanitizer
#   bash scripts/gpu_session.sh build bench-conv-8 bench-step # call 2: 32x8d blocks + model step, train step
#   bash scripts/gpu_session.sh build bench-conv-16 profile   # call 3: 32x16d blocks, step profile
#   bash scripts/gpu_session.sh build bench-ce bench-conv-4   # call 4: soft-CE, 32x4d blocks
#
# `build` is quick when the machine is still warm (pip reuses the in-place build). Phases run in the
# order given; a failing phase is reported and the next one still runs; the exit status is the number
# of phases that failed. Benchmarks append to $OUT/results.json: copy its records into
# benchmarks/results/h100.json on the CPU machine and commit them.
set -uo pipefail

OUT=${OUT:-/tmp/wslfast-gpu}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export MAX_JOBS=${MAX_JOBS:-16} WSLFAST_CUDA_ARCHS=${WSLFAST_CUDA_ARCHS:-90a}
SANITIZER=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
failed=0

phase() {  # phase NAME TIMEOUT_S COMMAND...: runs it, its output to $OUT/NAME.log, a line of status
  local name=$1 limit=$2
  shift 2
  local start=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "[$name] rc=$rc in $((SECONDS - start)) s (log: $name.log)"
  if [ $rc -ne 0 ]; then
    failed=$((failed + 1))
    tail -n 25 "$OUT/$name.log"
  fi
}

for step in "$@"; do
  case "$step" in
    build)
      phase build 480 "$PY" -m pip install -q --no-build-isolation --no-deps -e .
      "$PY" -c "import wslfast, json; print(json.dumps(wslfast.build_info()))" | tee "$OUT/build_info.json"
      ;;
    test)
      phase test 540 "$PY" -m pytest -q -p no:cacheprovider -m cuda tests
      tail -n 3 "$OUT/test.log"
      ;;
    sanitize)
      # Every kernel once on small inputs (scripts/cuda_kernel_tour.py); racecheck for the shared-memory
      # kernels (reductions, tensor-core tiles), memcheck for all, synccheck for the barriers.
      phase memcheck 240 "$SANITIZER" --tool memcheck --error-exitcode 9 "$PY" scripts/cuda_kernel_tour.py
      phase racecheck 300 "$SANITIZER" --tool racecheck --error-exitcode 9 "$PY" scripts/cuda_kernel_tour.py \
        --only conv_bn
      phase racecheck_soft_ce 120 "$SANITIZER" --tool racecheck --error-exitcode 9 "$PY" \
        scripts/cuda_kernel_tour.py --only soft_ce
      phase synccheck 240 "$SANITIZER" --tool synccheck --error-exitcode 9 "$PY" scripts/cuda_kernel_tour.py
      ;;
    bench-ce)
      phase bench_soft_ce 540 "$PY" benchmarks/bench_soft_ce.py --device cuda --out "$OUT/results.json"
      ;;
    bench-conv-4|bench-conv-8|bench-conv-16)
      # One width per call (torch.compile of each shape takes a while); the 32x8d call adds the
      # whole-model step (ResNeXt-101 32x8d, batch 64, bf16, fused vs unfused).
      width=${step#bench-conv-}
      extra=(--no-step)
      [ "$width" = 8 ] && extra=()
      phase "bench_conv_bn_$width" 570 "$PY" benchmarks/bench_conv_bn.py --device cuda --widths "$width" \
        "${extra[@]}" --out "$OUT/results.json"
      ;;
    bench-step)
      # The training step without data or DALI (the GPU machine has none): model + loss + SGD.
      phase bench_train_step 400 "$PY" benchmarks/bench_train_step.py --loader synthetic --device cuda \
        --arch resnext101_32x8d --batch-size 64 --image-size 224 --amp bf16 --classes 17000 --steps 20 \
        --out "$OUT/results.json"
      ;;
    profile)
      phase profile_step 300 "$PY" benchmarks/profile_step.py --device cuda --out "$OUT/results.json" \
        --trace "$OUT/step_trace.json"
      cat "$OUT/profile_step.log"
      ;;
    *)
      echo "unknown phase '$step' (build, test, sanitize, bench-ce, bench-conv-{4,8,16}, bench-step, profile)" >&2
      failed=$((failed + 1))
      ;;
  esac
done
exit $failed
