#!/usr/bin/env bash
# Every study of the shipped SAE on the embedded default (SmolLM2-135M-Instruct, WordNet benchmark), the
# comparison of all methods and every figure, one command from anywhere:
#
#     scripts/run_studies.sh
#
# Results go to $RESULTS/<study>/ (JSON), figures to $FIGURES/ (PNG + SVG, drawn from the JSON by
# `dsg-lens figures`). Each step prints its command and its wall time; the summary at the end lists them all.
#
# Question subsets (to keep the whole run near an hour and a half on 2 CPU cores): the sweeps and studies score
# $QUESTIONS base-correct questions per side (default 100, the subset the README's sweep uses), the comparison
# $COMPARE_QUESTIONS (default 300), the sequential study $TOPIC_QUESTIONS per domain (default 50, retain twice
# that). --max-questions K scores a fixed seeded sample of K base-correct questions per side, stratified by subject
# (the retain side spans all six retain domains). RMU does not depend on the SAE: the `rmu` step trains its 3 x 2
# grid around the point tuned by hand (see the README) and extends a grid measured on the same questions instead of
# retraining it.
#
# Runtime, measured with OMP_NUM_THREADS=1 on a 2-core machine running a second job beside it (2026-11-30): demo
# 470 s, sweep 429, static_clamp 554, rmu 231, compare 684, relearn 1035, sequential 291, efficiency 400, zeroshot
# 372, latent_ablation 937 (three jobs on the two cores), figures ~30: about 90 min without attacks (sized by
# their own issue: see the README). Drop steps already run with STEPS="...".
#
# Environment: RESULTS (default figures/results), FIGURES (default figures), STEPS (default: every step below, in
# this order), QUESTIONS, COMPARE_QUESTIONS, TOPIC_QUESTIONS, OMP_NUM_THREADS (default 2), DSG (default dsg-lens).
# A step that fails stops the script (set -e): the results of the steps before it stay.
set -euo pipefail
cd "$(dirname "$0")/.."
RESULTS=${RESULTS:-figures/results}
FIGURES=${FIGURES:-figures}
QUESTIONS=${QUESTIONS:-100}
COMPARE_QUESTIONS=${COMPARE_QUESTIONS:-300}
TOPIC_QUESTIONS=${TOPIC_QUESTIONS:-50}
DSG=${DSG:-dsg-lens}
STEPS=${STEPS:-demo sweep static_clamp rmu compare relearn sequential efficiency zeroshot latent_ablation attacks figures}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
export PYTHONUNBUFFERED=1

TIMES=()
run() {  # run NAME COMMAND...: print the command, run it, record its wall time
    local name=$1 start
    shift
    echo "== $name: $*"
    start=$(date +%s)
    "$@"
    TIMES+=("$name $(( $(date +%s) - start ))")
    echo "== $name: $(( $(date +%s) - start )) s"
}

for step in $STEPS; do
    case $step in
    demo)  # report.json (rho histogram) and the guardrail's FeatureSet (latent scatter)
        run demo $DSG demo --out "$RESULTS/demo" --quiet ;;
    sweep)  # DSG: N x clamp x p_dyn, tau per configuration from held-out retain questions
        run sweep $DSG sweep --max-questions "$QUESTIONS" --n-values 10 20 40 --clamp-values 50 500 \
            --p-dyn-values 50 65 80 95 --out "$RESULTS/sweep" --quiet ;;
    static_clamp)  # SAEBench's grid: retain frequency <= 0.001 / 0.01, N 10 / 20, multipliers 25-200
        run static_clamp $DSG static-clamp-sweep --max-questions "$QUESTIONS" --out "$RESULTS/static_clamp" \
            --dsg-sweep "$RESULTS/sweep/sweep.json" --quiet ;;
    rmu)  # around the tuned point: alpha 10 / 30 / 100 x 50 / 100 steps (rows already measured are kept)
        run rmu $DSG rmu-grid --max-questions "$QUESTIONS" --layers 6 --steering-scales 10 --alphas 10 30 100 \
            --lrs 1e-3 --steps 50 100 --max-len 64 --out "$RESULTS/rmu" --quiet ;;
    compare)  # every method at its best point (retain >= 0.95) on more questions, with the unlearning step's cost
        run compare $DSG compare --best-from "$RESULTS" --min-retain 0.95 --max-questions "$COMPARE_QUESTIONS" \
            --methods base static_clamp rmu dsg_window --out "$RESULTS/compare" --quiet ;;
    relearn)  # fine-tuning on forget texts; DSG and static clamping stay attached while it trains
        run relearn $DSG study relearn --best-from "$RESULTS" --max-questions "$QUESTIONS" --examples 32 \
            --steps 16 --lr 1e-4 --eval-steps 0 4 8 16 --out "$RESULTS/relearn" --quiet ;;
    sequential)  # noun.animal -> noun.food -> noun.artifact, retain on the other domains
        run sequential $DSG study sequential --topics noun.animal noun.food noun.artifact \
            --topic-questions "$TOPIC_QUESTIONS" --out "$RESULTS/sequential" --quiet ;;
    efficiency)  # selection from 10-100% of the forget corpus
        run efficiency $DSG study efficiency --max-questions "$QUESTIONS" --fractions 0.1 0.25 0.5 1.0 \
            --out "$RESULTS/efficiency" --quiet ;;
    zeroshot)  # latents from seed words (no forget-corpus statistics), tau from a grid
        run zeroshot $DSG study zeroshot --max-questions "$QUESTIONS" --taus 0.1 0.2 0.3 0.4 0.5 0.6 0.8 \
            --out "$RESULTS/zeroshot" --quiet ;;
    latent_ablation)  # each selected latent zero-ablated: loss on forget / retain text
        run latent_ablation $DSG study latent-ablation --texts 32 --out "$RESULTS/latent_ablation" --quiet ;;
    attacks)  # every attack on six gates (rates only), then 1600 filler tokens on 20 + 20 questions
        run attacks $DSG study attacks --gates paper window count count_turn probe "window|probe" \
            --filler-tokens 0 64 256 --filler-after 64 256 --turns 2 3 5 --system-tokens 256 \
            --max-questions "$QUESTIONS" --max-retain-attacked "$QUESTIONS" --no-accuracy --out "$RESULTS/attacks" --quiet
        run attacks_long $DSG study attacks --gates paper window count count_turn probe "window|probe" \
            --filler-tokens 1600 --filler-after --turns --system-tokens --max-questions 20 \
            --max-retain-attacked 20 --no-accuracy --no-neighbours --no-error-term --out "$RESULTS/attacks_long" --quiet
        run attacks_error_term $DSG study attacks --gates window probe --filler-tokens --filler-after --turns \
            --system-tokens --max-questions 60 --max-retain-attacked 0 --no-neighbours \
            --out "$RESULTS/attacks_error_term" --quiet ;;
    figures)
        run figures $DSG figures --results "$RESULTS" --out "$FIGURES" --force ;;
    *)
        echo "unknown step $step (steps: demo sweep static_clamp rmu compare relearn sequential efficiency zeroshot" \
             "latent_ablation attacks figures)" >&2
        exit 2 ;;
    esac
done

echo "== wall time per step (s), OMP_NUM_THREADS=$OMP_NUM_THREADS"
total=0
for entry in "${TIMES[@]}"; do
    echo "   $entry"
    total=$(( total + ${entry##* } ))
done
echo "   total $total"
