#!/usr/bin/env bash
# The GPU checks, prepared to run at once on a lent GPU (one H100/H200-class device):
#   bench: end-to-end pretraining throughput (bench_pretrain_e2e), batched augmentation
#          (bench_augment) and step throughput / MFU (bench_pretrain_speed): at most 4.25 min;
#   chain: mosaic FashionScenes and the fashion_gpu pipeline (configs/pipeline/fashion_gpu.yaml),
#          pretrain -> distill -> WSSS -> probes -> FS-CS on both folds: at most 7.7 min.
# A device call is limited to 10 minutes: run `bench` and `chain` as two calls (chain first
# when time is short), or `all` in one call with a limit of 12 minutes where that is allowed.
# Every result lands under $OUT (the chain's small files only: reports, summaries, logs,
# figures); each command has its own time limit and a failure does not stop the others.
#
#   OUT=/path/to/results bash benchmarks/gpu_checks.sh [all|bench|chain]
#
# DRY_RUN=1 prints the commands instead of running them (tests/launch/test_pipeline_gpu_config.py
# checks that each one parses).
set -uo pipefail

OUT=${OUT:?set OUT to the folder that collects the results}
PART=${1:-all}
PY=${PY:-python3}
WORK=${WORK:-runs/gpu_checks}
SCENES=data/fashion_scenes_mosaic
export PYTHONPATH=.

case $PART in all | bench | chain) ;; *)
    echo "usage: OUT=DIR bash benchmarks/gpu_checks.sh [all|bench|chain]" >&2
    exit 2
    ;;
esac
mkdir -p "$OUT"

# run NAME SECONDS CMD...: CMD with a time limit, its output in $OUT/NAME.log.
run() {
    local name=$1 limit=$2
    shift 2
    if [[ -n ${DRY_RUN:-} ]]; then
        printf '%q ' "$@"
        echo
        return 0
    fi
    echo "== $name: $*" | tee -a "$OUT/run.log"
    local start=$SECONDS
    timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    echo "== $name: exit $rc after $((SECONDS - start)) s" | tee -a "$OUT/run.log"
}

collect() {
    [[ -d $WORK/fashion_gpu ]] || return 0
    (cd "$WORK/fashion_gpu" && find . \( -name '*.md' -o -name '*.json' -o -name 'log.txt' \
        -o -name 'metrics.jsonl' -o -path '*figures/*.png' \) -not -path '*/checkpoints/*' \
        -not -path '*/pseudo_masks/*' -not -path '*/cache/*' -print0 |
        xargs -0 -I{} cp --parents {} "$OUT/fashion_gpu/")
}

if [[ -z ${DRY_RUN:-} ]]; then
    nvidia-smi >"$OUT/machine.txt" 2>&1
    "$PY" -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0))" >>"$OUT/machine.txt" 2>&1
fi

if [[ $PART == all || $PART == bench ]]; then
    run bench_pretrain_e2e 120 "$PY" benchmarks/bench_pretrain_e2e.py --device cuda \
        --recipe "ViT-S/16 224 dino" --workers 4 8 --steps 20 --images 2000
    run bench_augment 45 "$PY" benchmarks/bench_augment.py --device cuda --threads 1 --rounds 3
    run bench_pretrain_speed 90 "$PY" benchmarks/bench_pretrain_speed.py --device cuda \
        --steps 10 --threads 4
fi

if [[ $PART == all || $PART == chain ]]; then
    run fashion_scenes 60 "$PY" -m common.datasets.fashion_scenes --out "$SCENES" \
        --background mosaic --train 16000 --test 2000 --workers 16
    mkdir -p "$OUT/fashion_gpu"
    [[ -n ${DRY_RUN:-} ]] || trap collect EXIT
    run fashion_gpu 400 "$PY" -m launch pipeline --config configs/pipeline/fashion_gpu.yaml \
        --executor local --output-dir "$WORK/fashion_gpu"
fi
