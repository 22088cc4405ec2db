#!/usr/bin/env bash
# The GPU check of issue 19 (docs/gpu.md), one command on a CUDA machine, from anywhere:
#
#     scripts/gpu_check.sh
#
# (a) bench: Gemma-2-2B-shaped model of random weights + 16k JumpReLU SAE at blocks.3.hook_resid_post, batch 1 at
#     256 / 512 / 1024 tokens, fp32 and bf16, with the full-SAE reference hook -> figures/results/bench/gpu/
#     (one JSON per run, summary.json, table.md with the ratios next to the paper's Table 15);
# (b) the test suite with the tiny models and SAEs on the GPU (DSG_TEST_DEVICE=cuda);
# (c) the embedded demo on the GPU (its report must say the model ran on cuda).
# Every step runs even if an earlier one failed; the exit status is non-zero if any failed.
#
# Environment: PYTHON (default python3), RESULTS (default figures/results/bench/gpu), LOGS (default $OUT if set,
# else /tmp/dsg_gpu_check), DEMO_OUT (default /tmp/dsg_gpu_check_demo), STEPS (default "bench tests demo"),
# BENCH_ARGS (added to the bench's arguments), PYTEST_ARGS (added to pytest's). If the repository root holds a folder .whl/ of wheels (the device tool's way to
# bring dsg-lens's dependencies to a machine without network), they are installed into /tmp/site first. If $OUT is
# set (the device tool), the results and logs are also packed into $OUT/gpu_check.tar.gz, with table.md beside it.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
ROOT=$PWD
PY=${PYTHON:-python3}
RESULTS=${RESULTS:-figures/results/bench/gpu}
LOGS=${LOGS:-${OUT:-/tmp/dsg_gpu_check}}
DEMO_OUT=${DEMO_OUT:-/tmp/dsg_gpu_check_demo}
STEPS=${STEPS:-bench tests demo}
export PYTHONUNBUFFERED=1

if [ -d .whl ] && compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || { echo "installing .whl/ failed"; exit 2; }
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
mkdir -p "$LOGS" "$RESULTS"

"$PY" - <<'EOF' || exit 2
import sys, torch
if not torch.cuda.is_available():
    sys.exit(f"no CUDA device visible to torch {torch.__version__}: this script is for a CUDA machine "
             "(CPU dry run: docs/gpu.md)")
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}")
EOF
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv

failed=""
step() {  # step NAME COMMAND...: run, tee into $LOGS/NAME.log, time it, remember failures
    local name=$1 start rc
    shift
    echo "=== $name: $*"
    start=$(date +%s)
    "$@" 2>&1 | tee "$LOGS/$name.log"
    rc=${PIPESTATUS[0]}
    echo "=== $name: exit $rc after $(( $(date +%s) - start )) s"
    [ "$rc" -eq 0 ] || failed="$failed $name"
}

demo() {  # the embedded demo on the GPU; --device cuda where the demo takes it, else TransformerLens's default
    local out=$DEMO_OUT device_flag=()
    if "$PY" -m dsg_lens.cli demo --help 2>/dev/null | grep -q -- "--device"; then
        device_flag=(--device cuda)
    else
        echo "note: \`dsg-lens demo\` has no --device; it loads the model on TransformerLens's default device (cuda here)"
    fi
    "$PY" -m dsg_lens.cli demo ${device_flag[@]+"${device_flag[@]}"} --quiet --out "$out" || return 1
    "$PY" - "$out/report.json" <<'EOF'
import json, sys
report = json.load(open(sys.argv[1]))
device = report["model"]["device"]
print(f"demo report: model on {device}, timing {report['timing_s']}")
sys.exit(0 if device.startswith("cuda") else f"the demo ran on {device}, not cuda")
EOF
}

for s in $STEPS; do
    case $s in
        # shellcheck disable=SC2086
        bench) step bench "$PY" -m dsg_lens.bench_models --out "$RESULTS" --device cuda --seq-lens 256 512 1024 \
                   --dtypes float32 bfloat16 --no-progress ${BENCH_ARGS:-} ;;
        # shellcheck disable=SC2086
        tests) step tests env DSG_TEST_DEVICE=cuda "$PY" -m pytest -q -p no:cacheprovider ${PYTEST_ARGS:-} ;;
        demo) step demo demo ;;
        *) echo "unknown step $s (bench, tests, demo)"; failed="$failed $s" ;;
    esac
done

if [ -n "${OUT:-}" ]; then  # the device tool brings back only $OUT (a few files): pack results, logs, demo report
    [ -f "$RESULTS/table.md" ] && cp "$RESULTS/table.md" "$OUT/table.md"
    [ -f "$DEMO_OUT/report.json" ] && cp "$DEMO_OUT/report.json" "$LOGS/demo_report.json"
    tar czf "$OUT/gpu_check.tar.gz" "$RESULTS" -C "$LOGS" $(cd "$LOGS" && ls ./*.log ./*.json 2>/dev/null)
fi
[ -f "$RESULTS/table.md" ] && cat "$RESULTS/table.md"
if [ -n "$failed" ]; then
    echo "GPU check: FAILED:$failed (logs in $LOGS)"
    exit 1
fi
echo "GPU check: all steps passed (results in $RESULTS, logs in $LOGS)"
