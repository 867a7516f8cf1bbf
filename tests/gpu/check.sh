#!/usr/bin/env bash
# check.sh - the one-shot GPU check of the CUDA kernels (docs/gpu.md), for a GPU host.
#
#   tests/gpu/check.sh BUILD_DIR
#
# Builds nothing: BUILD_DIR is a build made elsewhere (a machine without a GPU, the same nvcc)
# and carried along. Steps, each with a time limit, then a summary, last:
#   0. the host: nvidia-smi, ldd of the test binary (no library missing), compute-sanitizer --version
#   1. test_gpu_parity: every kernel against its CPU op over the shape grid, fp32 and bf16, and the
#      whole decoder against the CPU's; the generation engine's kernels (kvstore, decode_attention,
#      sampler) against kernels/cpu/engine_ref.c; one process per group of checks
#   2. test_gpu_parity --quick with TIDAL_CUDA_SYNC=1 (every launch checked synchronously) and
#      TIDAL_CUDA_POISON=1 (every device allocation NaN until written, as in a Debug build)
#   3. compute-sanitizer memcheck on --quick; racecheck, initcheck, synccheck on --quick --skip-gemm
#      (cuBLASLt's own kernels are not ours to race-check); "device not supported" is a SKIP, said
#   4. the trainer on the GPU (needs tidal's runtime libraries - NATS, protobuf-c, jansson, libyaml,
#      OpenBLAS, ...: a SKIP naming the missing ones when `ldd BUILD_DIR/tidal` lacks any):
#      `tidal debug selfcheck --device cuda` (the trainer's start-up self-check), the same with an
#      error planted (it must refuse, naming the op), test_trainer_device, test_selfcheck and
#      test_trainer_step (which run the CUDA device, and a whole trainer step on it, against the CPU
#      when a GPU answers); then per precision (fp32, bf16): the self-check, five AdamW steps of the
#      tiny model tracking the CPU's loss (`--steps 5`) and a bit-identical rerun (`--rerun`)
#   5. `tidal bench train --device cuda --json`: tokens/s and MFU, Qwen2.5-0.5B shape (same libraries)
# Exit: 0 all ran steps passed, 1 a step failed, 77 (ctest's SKIP) no GPU or no CUDA build - said
# on one line. ctest runs it as `gpu_check` (label gpu).
set -u
build=${1:?usage: check.sh BUILD_DIR}
parity=$build/tests/test_gpu_parity
summary=()
failed=0
note() { summary+=("$1"); }

if [[ ! -x $parity ]]; then
    echo "SKIP: gpu check: $parity not built (the build found no nvcc: TIDAL_CUDA)"
    exit 77
fi
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "SKIP: gpu check: no GPU here (nvidia-smi absent or lists no device)"
    exit 77
fi

# The build's RPATH names the toolkit directory of the build machine; the GPU host's toolkit may
# live elsewhere: its usual library directories go on the search path (after the RPATH).
for d in ${CUDA_HOME:+$CUDA_HOME/lib64} ${CUDA_HOME:+$CUDA_HOME/lib} /usr/local/cuda/lib64 /usr/local/cuda/lib \
         /usr/local/cuda/targets/x86_64-linux/lib; do
    [[ -d $d ]] && LD_LIBRARY_PATH=${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$d
done
export LD_LIBRARY_PATH

echo "== 0. host"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
if ldd "$parity" | grep -q "not found"; then
    ldd "$parity" | grep "not found"
    note "0. ldd test_gpu_parity: FAIL (libraries missing, above)"
    failed=1
else
    ldd "$parity" | grep -E "cuda|cublas|gomp" || true
    note "0. ldd test_gpu_parity: PASS (nothing missing)"
fi
sanitizer=$(command -v compute-sanitizer || true)
for d in ${CUDA_HOME:-} /usr/local/cuda; do
    [[ -z $sanitizer && -n $d && -x $d/bin/compute-sanitizer ]] && sanitizer=$d/bin/compute-sanitizer
done
if [[ -n $sanitizer ]]; then "$sanitizer" --version | tail -1; fi

# run NAME LIMIT_S CMD...: one step, its output kept in $out, its verdict noted
run() {
    local name=$1 limit=$2
    shift 2
    local t0=$SECONDS rc
    out=$(timeout "$limit" "$@" 2>&1)
    rc=$?
    printf '%s\n' "$out"
    local took=$((SECONDS - t0))
    if [[ $rc -eq 0 ]]; then
        note "$name: PASS (${took}s)"
    elif [[ $rc -eq 77 ]]; then
        note "$name: SKIP ($(grep -m1 SKIP <<<"$out"))"
    elif [[ $rc -eq 124 ]]; then
        note "$name: FAIL (over ${limit}s)"
        failed=1
    else
        note "$name: FAIL (exit $rc)"
        failed=1
    fi
    return $rc
}

echo "== 1. parity, full grid (each group of checks in its own process: a fault stops only its group)"
for group in gemm head embedding rmsnorm rope swiglu attention adamw decoder kvstore decode_attention sampler decode; do
    run "1. parity $group" 60 "$parity" --only "$group"
    rc=$?
    if [[ $rc -eq 77 ]]; then
        echo "SKIP: gpu check: the parity binary finds no usable device: $(grep -m1 SKIP <<<"$out")"
        exit 77
    fi
    while read -r l; do note "   $l"; done < <(grep -E "^(FAIL|gpu parity:)" <<<"$out")
done

echo "== 2. parity, quick grid, TIDAL_CUDA_SYNC=1, TIDAL_CUDA_POISON=1 (every device allocation NaN first)"
TIDAL_CUDA_SYNC=1 TIDAL_CUDA_POISON=1 run "2. parity --quick, TIDAL_CUDA_SYNC=1 TIDAL_CUDA_POISON=1" 120 "$parity" --quick >/dev/null

echo "== 3. compute-sanitizer"
if [[ -z $sanitizer ]]; then
    note "3. compute-sanitizer: SKIP (not found on PATH, CUDA_HOME or /usr/local/cuda)"
else
    for tool in memcheck racecheck initcheck synccheck; do
        args=(--quick)
        [[ $tool != memcheck ]] && args+=(--skip-gemm)
        t0=$SECONDS
        out=$(timeout 90 "$sanitizer" --tool "$tool" --error-exitcode 3 "$parity" "${args[@]}" 2>&1)
        rc=$?
        printf '%s\n' "$out" | tail -5
        if grep -qi "not supported" <<<"$out"; then
            note "3. $tool: SKIP ($(grep -i -m1 "not supported" <<<"$out"))"
        elif [[ $rc -eq 0 ]]; then
            note "3. $tool: PASS ($((SECONDS - t0))s)"
        else
            note "3. $tool: FAIL (exit $rc; $(grep -m1 -E "ERROR SUMMARY|Invalid|Race|Uninitialized" <<<"$out"))"
            failed=1
        fi
    done
fi

echo "== 4. the trainer on the GPU (tidal debug selfcheck, the device tests)"
tidal=$build/tidal
tidal_ok=0
if [[ ! -x $tidal ]]; then
    note "4. trainer self-check: SKIP ($tidal not built)"
elif missing=$(ldd "$tidal" | grep "not found" | awk '{print $1}' | tr '\n' ' ') && [[ -n $missing ]]; then
    note "4. trainer self-check: SKIP (tidal's runtime libraries are missing here: $missing- install them, docs/gpu.md)"
else
    tidal_ok=1
    run "4. tidal debug selfcheck --device cuda" 120 "$tidal" debug selfcheck --device cuda
    t0=$SECONDS
    out=$(TIDAL_SELFCHECK_PLANT=backward:model.layers.1.mlp.down_proj.weight timeout 120 \
          "$tidal" debug selfcheck --device cuda 2>&1)
    rc=$?
    printf '%s\n' "$out" | tail -2
    if [[ $rc -eq 1 ]] && grep -q "backward: gradient of model.layers.1.mlp.down_proj.weight" <<<"$out"; then
        note "4. selfcheck refuses a planted error: PASS ($((SECONDS - t0))s)"
    else
        note "4. selfcheck refuses a planted error: FAIL (exit $rc; $(tail -1 <<<"$out"))"
        failed=1
    fi
    for t in test_trainer_device test_selfcheck test_trainer_step; do
        if [[ -x $build/tests/$t ]]; then run "4. $t" 120 "$build/tests/$t" >/dev/null
        else note "4. $t: SKIP (not built)"; fi
    done
    # per precision: the self-check, five AdamW steps tracking the CPU's loss, a bit-identical rerun
    # (each line of the result, or the refusal naming the op or step, goes into the summary)
    for prec in fp32 bf16; do
        for mode in "" "--steps 5" "--rerun"; do
            case $mode in
                "") name="4. selfcheck --precision $prec"; keep="^selfcheck \\(" ;;
                --steps*) name="4. five AdamW steps track the CPU loss ($prec)"; keep="^loss track .*(after update|track the CPU)" ;;
                *) name="4. bit-identical rerun ($prec)"; keep="^rerun \\(" ;;
            esac
            # shellcheck disable=SC2086 # $mode is zero, one or two words
            run "$name" 120 "$tidal" debug selfcheck --device cuda --precision "$prec" $mode
            while read -r l; do note "   $l"; done < <(grep -E "$keep|^tidal debug selfcheck:" <<<"$out")
        done
    done
fi

echo "== 5. bench train --device cuda"
if [[ $tidal_ok -eq 1 ]]; then
    run "5. bench train --device cuda" 300 "$tidal" bench train --device cuda --json >/dev/null
    line=$(grep -m1 '"bench"' <<<"$out" || true)
    [[ -n $line ]] && note "   $line"
else
    note "5. bench train --device cuda: SKIP (see step 4)"
fi

echo "== 6. the generation engine on the GPU (engine self-check, test_engine_cuda, sanitizer, bench generate)"
if [[ $tidal_ok -eq 1 ]]; then
    # greedy fp32 generation equal to the CPU engine token for token (a fork, a weight swap mid-generation)
    run "6. tidal debug engine-selfcheck --device cuda" 120 "$tidal" debug engine-selfcheck --device cuda
    t0=$SECONDS
    out=$(TIDAL_ENGINE_SELFCHECK_PLANT=2:5 timeout 120 "$tidal" debug engine-selfcheck --device cuda 2>&1)
    rc=$?
    printf '%s\n' "$out" | tail -2
    if [[ $rc -eq 1 ]] && grep -q "request 2 (prompt of 17 tokens): token 5: " <<<"$out"; then
        note "6. engine-selfcheck refuses a planted token: PASS ($((SECONDS - t0))s)"
    else
        note "6. engine-selfcheck refuses a planted token: FAIL (exit $rc; $(tail -1 <<<"$out"))"
        failed=1
    fi
    # alone vs a batch of 64 (forked prompts), sampled logprobs vs the trainer's recompute (fp32, bf16)
    if [[ -x $build/tests/test_engine_cuda ]]; then run "6. test_engine_cuda" 180 "$build/tests/test_engine_cuda"
    else note "6. test_engine_cuda: SKIP (not built)"; fi
    if [[ -n $sanitizer ]]; then # a short decode (the self-check's 120 tokens) under memcheck
        run "6. compute-sanitizer memcheck: engine-selfcheck" 300 "$sanitizer" --tool memcheck --error-exitcode 3 \
            "$tidal" debug engine-selfcheck --device cuda
    else
        note "6. compute-sanitizer on a short decode: SKIP (no compute-sanitizer)"
    fi
    run "6. bench generate --device cuda" 300 "$tidal" bench generate --device cuda --json
    line=$(grep -m1 '"bench"' <<<"$out" || true)
    [[ -n $line ]] && note "   $line"
else
    note "6. the generation engine on the GPU: SKIP (see step 4)"
fi

echo
echo "== gpu check summary ($(nvidia-smi --query-gpu=name --format=csv,noheader | head -1))"
for l in "${summary[@]}"; do echo "$l"; done
[[ $failed -eq 0 ]] && echo "gpu check: PASS" || echo "gpu check: FAIL"
exit $failed
