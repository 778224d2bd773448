"""Paper Fig. 2 (ResNet): PT against the grid on CIFAR-10, learning-rate ladder.

Authors' settings (DESIGN.md section 2b), the defaults here: ResNet20 or
ResNet44 (He et al. 2016, BatchNorm statistics per replica), SGD with momentum
0.9 and weight decay 1e-4, batch 128, 8 replicas; every replica trains at lr
0.1 until step 32K, then the linear lr ladder 0.009-0.014 switches on with
exchanges every 300 steps and C = 20 (ResNet20) or 30 (ResNet44), until 64K
steps; random crop (4-pixel padding) and horizontal flip on device; one
random adjacent pair proposed per exchange (the paper's Algorithm 1). Result
files, length options and the rule for C at another interval are those of
:mod:`experiments.fig2_common`.

    python -m experiments.fig2_resnet --depth 20             # paper scale (GPU)
    python -m experiments.fig2_resnet --depth 20 --scale 0.004 --burn-in 128 \\
        --exchange-interval 16 --c-rule keep --rounds 8 --batch-size 32 \\
        --eval-size 256 --final-test-size 2000               # reduced CPU run
"""

from __future__ import annotations

import argparse

from experiments.common import data_dir_error
from experiments.fig2_common import (
    Fig2Config,
    add_common_args,
    check_args,
    run_experiment,
)
from tempering.zoo import datasets
from tempering.zoo.models import ResNet, resnet20, resnet44, resnet_optimizer

TOTAL_STEPS = 64_000
BURN_IN = 32_000
INTERVAL = 300


def paper_config(depth: int) -> Fig2Config:
    """ResNet20 / ResNet44 settings of the paper."""
    return Fig2Config(
        name=f"fig2_resnet{depth}",
        hyperparameter="learning_rate",
        low=0.009,
        high=0.014,
        num_replicas=8,
        c=20.0 if depth == 20 else 30.0,
        exchange_interval=INTERVAL,
        burn_in=BURN_IN,
        rounds=(TOTAL_STEPS - BURN_IN) // INTERVAL,
        learning_rate=0.1,
        dropout_rate=0.0,
        burn_in_learning_rate=0.1,
        augment=True,
        paper_exchange_interval=INTERVAL,
        paper_num_steps=TOTAL_STEPS,
    )


def _resnet8() -> ResNet:
    """ResNet8 (one block per stage): a fast stand-in for the smoke test only."""
    return ResNet(stage_sizes=(1, 1, 1))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--depth",
        type=int,
        default=20,
        choices=[8, 20, 44],
        help="20 or 44 (paper); 8 only for the smoke test",
    )
    add_common_args(p)
    args = p.parse_args(argv)
    config = check_args(p, args, paper_config(args.depth))
    problem = data_dir_error(args.data_dir, "cifar10", source="auto")
    if problem:
        p.error(problem)
    data = datasets.load_dataset("cifar10", data_dir=args.data_dir, source="auto")
    model = {20: resnet20, 44: resnet44}.get(args.depth, _resnet8)()
    tx = resnet_optimizer(learning_rate=0.1, momentum=0.9, weight_decay=1e-4)
    extra = {"model": f"ResNet{args.depth}", "augment": "crop(4)+flip on device"}
    return run_experiment(
        config, model, tx, data, args, augment=datasets.augment_crop_flip, extra=extra
    )


if __name__ == "__main__":
    main()
