#!/usr/bin/env bash
# The GPU items of the performance and paper-claims issues, as one device call
# of at most ten minutes that a later call resumes.
#
#   experiments/gpu_session.sh OUT [--tiny]
#
# OUT collects the result files and the Fig. 2 runs' checkpoints; pass the
# same folder back (carried) and the runs carry on where the last call
# stopped. CIFAR-10 is read from $TEMPERING_DATA_DIR (copy
# ../shared/data/cifar10 into an ignored folder and carry it: ../shared does
# not travel). --tiny runs the same commands at a few steps on CPU (the test
# of this script where no GPU is lent).
#
# 1. The zoo on the GPU (issue "Performance III", item 4): LeNet-5 (CIFAR-10)
#    and a user's LeNet at M = 8 against the loop and an expert's vmap, and
#    ResNet-20 at M = 8 and 32 with model TFLOP/s and MFU.
# 2. Fig. 2 with the network the authors' code builds (issue "The paper's
#    claims", item 4): CIFAR-10 dropout ladder at full length (140,800 steps,
#    the authors' protocol), seeds 0-2, PT and grid, six processes side by
#    side on the one GPU, each stopped by `timeout` and resumed from its
#    checkpoints by the next call.
set -euo pipefail

OUT=${1:?usage: experiments/gpu_session.sh OUT [--tiny]}
MODE=${2:-}
mkdir -p "$OUT"
export XLA_PYTHON_CLIENT_PREALLOCATE=false # six processes share the GPU
DATA=(--data-dir "${TEMPERING_DATA_DIR:-../shared/data}")

if [ "$MODE" = --tiny ]; then
    ZOO=(--models lenet_user --ms 2 --batch 8 --reps 2 --slow-reps 1)
    FIG=(--steps 60 --exchange-interval 20 --c-rule keep --checkpoint-every 1
        --train-size 256 --eval-size 64 --final-test-size 64)
    FIG_SECONDS=${FIG_SECONDS:-300}
elif [ -z "$MODE" ]; then
    ZOO=(--models lenet_cifar10,lenet_user,resnet20 --ms 8,32 --reps 20 --slow-reps 10)
    FIG=()
    FIG_SECONDS=${FIG_SECONDS:-360}
else
    echo "unknown option $MODE (only --tiny)" >&2
    exit 2
fi

if [ ! -e "$OUT/bench_zoo_gpu.json" ]; then
    python -m experiments.bench_zoo "${ZOO[@]}" --policies "" \
        --name bench_zoo_gpu --out-dir "$OUT" >"$OUT/bench_zoo_gpu.log" 2>&1
fi

# A run stopped by the last call's timeout may have left its checkpoint lock;
# on a fresh machine (another host name) the library would refuse it as
# another run's. This script is the folder's only writer: remove them.
if [ -d "$OUT/checkpoints" ]; then
    find "$OUT/checkpoints" -name .tempering-lock -delete
fi
for seed in 0 1 2; do
    for kind in pt grid; do
        # SIGINT at the time limit (the run releases its lock), SIGKILL 30 s
        # later; exit status 124: stopped, resumed by the next call
        timeout -s INT -k 30 "$FIG_SECONDS" python -u -m experiments.fig2_lenet \
            --dataset cifar10 --ladder dropout --model authors \
            --seeds "$seed" --kinds "$kind" "${FIG[@]}" "${DATA[@]}" \
            --checkpoint-dir "$OUT/checkpoints" --out-dir "$OUT/seed${seed}_${kind}" \
            >>"$OUT/fig2_seed${seed}_${kind}.log" 2>&1 &
    done
done
wait
exit 0
