#!/usr/bin/env bash
# The project's GPU measurements in one call, for a machine with an NVIDIA GPU (the device
# tool's H200 in this project's sessions): each part is time-boxed, its log and files go to
# RESULTS (default OUT/results, so a call that times out still returns what finished).
#
#   bash scripts/gpu_all.sh OUT [PART ...]
#
# PART: deploy (issue 14: scripts/deploy_gpu_check.py), parallel (issue 17:
# scripts/bench_parallel.py --sections replicas), generate (issue 15:
# scripts/bench_generate_gpu.py), crash (issue 18: scripts/gpu_crash_check.py), fresh-load
# (issue 18: does a cuda artifact load in a fresh process: scripts/gpu_fresh_load.py), gpu-tests
# (pytest -m gpu, each test in its own process; GPU_TESTS_K filters), capture-bisect (the threaded CUDA-graph test
# per part of other code's work, each in a fresh process), cublas-race (the same other work beside
# plain PyTorch products: scripts/gpu_cublas_race.py), probe (scripts/gpu_probe.py's fresh-process steps), speed (issue 18:
# scripts/bench_gpu.py env+speed, ResNet-50 / BERT / ViT at batch 1 and 32), auto (issue 18:
# scripts/gpu_auto_buckets.py), kernel-profile (scripts/gpu_kernel_profile.py), real (issue 18: real models through the cuda target,
# scripts/gpu_real_models.py; carry .realmodels/ alone); default: deploy parallel generate. Budgets (seconds) are the PART_SECONDS_*
# variables below. A part that times out keeps what it wrote so far. Carried wheels in .whl/
# (`bash scripts/gpu_wheels.sh` on the developer's machine makes them and .whl/setup.sh) are
# installed first when present.
set -uo pipefail
OUT=${1:?usage: gpu_all.sh OUT [PART ...]}
shift
PARTS=("$@")
[ ${#PARTS[@]} -eq 0 ] && PARTS=(deploy parallel generate)
# Logs and files are written under OUT as they finish: a call that runs out of time still
# returns what its parts wrote (2026-12-06: a bisect whose results waited for the final archive
# returned nothing).
RESULTS=${RESULTS:-$OUT/results}
mkdir -p "$OUT" "$RESULTS"
export PYTHONUNBUFFERED=1 AI_VMM_CACHE_DIR=${AI_VMM_CACHE_DIR:-/tmp/ai-vmm-cache}
if [ -f .whl/setup.sh ]; then
    bash .whl/setup.sh >"$RESULTS/setup.log" 2>&1 && export PYTHONPATH=/tmp/site
else  # no wheels carried (the real part): the project and the few wheels the real part
    # carries (.realmodels/wheels: jsonschema and its dependencies), which the cuda target needs
    { [ ! -d .realmodels/wheels ] || python3 -m pip install -q --no-index --no-deps --no-compile \
        --target /tmp/site .realmodels/wheels/*.whl; } >"$RESULTS/setup.log" 2>&1
    python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile \
        --target /tmp/site . >>"$RESULTS/setup.log" 2>&1 && export PYTHONPATH=/tmp/site
fi
PART_SECONDS_deploy=${PART_SECONDS_deploy:-170}
PART_SECONDS_parallel=${PART_SECONDS_parallel:-190}
PART_SECONDS_generate=${PART_SECONDS_generate:-170}
PART_SECONDS_crash=${PART_SECONDS_crash:-170}

run_part() {
    local name=$1 budget=$2
    shift 2
    local start=$SECONDS
    echo "== $name (budget $budget s)"
    timeout --kill-after=10 "$budget" "$@" >"$RESULTS/$name.log" 2>&1
    local rc=$?
    echo "== $name: exit $rc after $((SECONDS - start)) s"
    tail -n 5 "$RESULTS/$name.log"
}

nvidia-smi --query-gpu=name,power.draw,power.limit --format=csv >"$RESULTS/gpu.txt" 2>&1
for part in "${PARTS[@]}"; do
    case $part in
    deploy)
        run_part deploy "$PART_SECONDS_deploy" python3 scripts/deploy_gpu_check.py \
            --out "$RESULTS/deploy" --fp32-only --max-batch 16 --seconds 0.5 ;;
    parallel)
        cp docs/parallel.json "$RESULTS/parallel.json" 2>/dev/null
        run_part parallel "$PART_SECONDS_parallel" python3 scripts/bench_parallel.py \
            --sections replicas --rounds 3 --seconds 1 ${PARALLEL_ARGS:-} \
            --json "$RESULTS/parallel.json" --out "$RESULTS/parallel.md" ;;
    generate)
        # One process per engine: one process running all three died with a segmentation
        # fault on the H200 (2026-12-04) while the torch.compile baseline warmed up.
        cp docs/generate.md "$RESULTS/generate.md" 2>/dev/null
        for engine in ${GENERATE_ENGINES:-vmm,vmm-inductor,vmm-tuned compiled eager}; do
            run_part "generate-$engine" "$PART_SECONDS_generate" python3 -X faulthandler \
                scripts/bench_generate_gpu.py --engines "$engine" \
                --models smollm2,llama1b --dtypes bf16 --batches 1,16 --new-tokens 64 \
                --rounds 2 --json "$RESULTS/generate.json" --out "$RESULTS/generate.md"
        done ;;
    crash)
        AI_VMM_TEST_CONVFORMER_PACKAGE=/tmp/cfpkg run_part crash "$PART_SECONDS_crash" \
            python3 scripts/gpu_crash_check.py --json "$RESULTS/crash.json" ;;
    fresh-load)
        run_part fresh-load "${PART_SECONDS_fresh_load:-150}" python3 scripts/gpu_fresh_load.py \
            "$RESULTS/fresh" ;;
    probe)
        run_part probe "${PART_SECONDS_probe:-200}" python3 scripts/gpu_probe.py \
            "$RESULTS/probe" aoti-pack,direct-load,vmm-build,vmm-load ;;
    speed)
        cp docs/gpu.json "$RESULTS/gpu.json" 2>/dev/null
        run_part speed "${PART_SECONDS_speed:-540}" python3 scripts/bench_gpu.py \
            --sections env,speed --models "${SPEED_MODELS:-resnet50,bert,vit}" --batches "${SPEED_BATCHES:-1,32}" \
            --variants "${SPEED_VARIANTS:-resnet50:cl+cudnn bert:freezing}" --rounds 3 --json "$RESULTS/gpu.json" ;;
    kernel-profile)
        # Where a batch's GPU time goes, ours against reduce-overhead (issue 18's batch-32 gap).
        run_part kernel-profile "${PART_SECONDS_kernel_profile:-150}" python3 \
            scripts/gpu_kernel_profile.py "${PROFILE_MODEL:-bert}" --batch "${PROFILE_BATCH:-32}" \
            --variant "${PROFILE_VARIANT:-}" --json "$RESULTS/profile.json" ;;
    auto)
        run_part auto "${PART_SECONDS_auto:-240}" python3 scripts/gpu_auto_buckets.py \
            --json "$RESULTS/auto.json" ;;
    capture-bisect)
        # The threaded CUDA-graph test with each part of other code's work beside it, each in a
        # fresh process, one package built once (docs/gpu.md, 2026-12-04 night).
        mkdir -p /tmp/cfpkg-bisect
        i=0
        for work in ${CAPTURE_WORK:-none matmul empty clear clear,empty,matmul}; do
            i=$((i + 1))  # a work repeated in CAPTURE_WORK gets a log of its own
            # -s, no warnings plugin, PYTHONWARNINGS=always: every failed capture's warning is
            # written to the log as it happens, so an abort later still leaves the sequence.
            AI_VMM_TEST_CONVFORMER_PACKAGE=/tmp/cfpkg-bisect AI_VMM_TEST_OTHER_WORK=$work \
                PYTHONWARNINGS=always PYTHONFAULTHANDLER=1 \
                run_part "capture-$i-${work//,/_}" "${PART_SECONDS_capture:-150}" python3 -m pytest -q -rA \
                -s -p no:warnings -p no:cacheprovider -m gpu tests/runtime/test_cuda_executor.py \
                -k many_shapes
        done ;;
    cublas-race)
        # Plain PyTorch, no ai-vmm code: threads' matrix products (eager, then CUDA graphs)
        # beside another thread's workspace clearing, cache emptying and products, each in a
        # fresh process (scripts/gpu_cublas_race.py).
        for work in ${RACE_WORK:-clear,empty,matmul clear,empty clear,matmul empty,matmul}; do
            for graphs in "" --graphs; do
                PYTHONFAULTHANDLER=1 run_part "race-${work//,/_}${graphs:+-graphs}" \
                    "${PART_SECONDS_race:-40}" python3 scripts/gpu_cublas_race.py --work "$work" \
                    --seconds "${RACE_SECONDS:-5}" $graphs
            done
        done
        # What taking the workspace away (the race's process-wide cure) costs, twice each.
        for config in default :0:0 default :0:0; do
            if [ "$config" = default ]; then
                python3 scripts/gpu_cublas_race.py --products
            else
                CUBLAS_WORKSPACE_CONFIG=$config python3 scripts/gpu_cublas_race.py --products
            fi
        done >"$RESULTS/race-products.log" 2>&1 ;;
    gpu-tests)
        # Each test in a process of its own: a CUDA abort in one (the threaded-capture test,
        # 2026-12-04 night) took every later test's result with it. The convformer package is
        # built once and shared (AI_VMM_TEST_CONVFORMER_PACKAGE).
        mkdir -p /tmp/cfpkg-tests
        python3 -m pytest -q -p no:cacheprovider --collect-only -m gpu -k "${GPU_TESTS_K:-}" \
            tests/runtime/test_cuda_executor.py tests/targets/test_cuda.py \
            tests/targets/test_cuda_lm.py 2>/dev/null |
            grep '::' >"$RESULTS/gpu-tests.txt"
        n=0
        while read -r test; do
            n=$((n + 1))
            AI_VMM_TEST_CONVFORMER_PACKAGE=/tmp/cfpkg-tests run_part "gpu-test-$n" \
                "${PART_SECONDS_gpu_test:-150}" python3 -m pytest -q -p no:cacheprovider -rA \
                "$test"
        done <"$RESULTS/gpu-tests.txt" ;;
    real)
        # Models carried packed (scripts/gpu_realmodels_carry.sh) unpacked first.
        for packed in .realmodels/*.bs4.xz; do
            [ -e "$packed" ] && python3 scripts/carry_pack.py unpack "$packed" && rm "$packed"
        done
        # Issue 18, "every model that exports": real models compiled for cuda:0, checked and
        # timed (carry .realmodels/ from scripts/gpu_realmodels_carry.sh instead of .whl/).
        run_part real "${PART_SECONDS_real:-480}" python3 scripts/gpu_real_models.py \
            --cache .realmodels --json "$RESULTS/real.json" ${REAL_MODELS:-ppocr_v4_det \
            nudenet_320n silero_vad_sequence smart_turn_v3 magika ppocr_v4_rec ppocr_cls} ;;
    *) echo "unknown part $part" ;;
    esac
done
case $RESULTS in
"$OUT"/*) echo "results: $RESULTS" ;;
*) tar -czf "$OUT/results.tgz" -C "$RESULTS" . && echo "results: $OUT/results.tgz" ;;
esac
