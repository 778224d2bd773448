"""tempering: hyperparameter parallel tempering for neural networks in JAX."""

from tempering.exchange import SCHEMES, ExchangeInfo, exchange, replicas_by_rung
from tempering.ladder import (
    HYPERPARAMETERS,
    Ladder,
    default_temperature,
    geometric_ladder,
    linear_ladder,
    make_ladder,
)
from tempering.layers import Dropout, dropout
from tempering.replicas import (
    EvalMetrics,
    ReplicaState,
    StepInfo,
    assign_rungs,
    create_replicas,
    evaluate,
    replica_train_step,
    set_hyperparams,
    sgd,
    train_segment,
    train_step,
)
from tempering.training import (
    PTHistory,
    PTResult,
    PTSummary,
    count_round_trips,
    pt_train,
)

__version__ = "0.1.0"

__all__ = [
    "HYPERPARAMETERS",
    "SCHEMES",
    "Dropout",
    "EvalMetrics",
    "ExchangeInfo",
    "Ladder",
    "PTHistory",
    "PTResult",
    "PTSummary",
    "ReplicaState",
    "StepInfo",
    "assign_rungs",
    "count_round_trips",
    "create_replicas",
    "default_temperature",
    "dropout",
    "evaluate",
    "exchange",
    "geometric_ladder",
    "linear_ladder",
    "make_ladder",
    "pt_train",
    "replica_train_step",
    "replicas_by_rung",
    "set_hyperparams",
    "sgd",
    "train_segment",
    "train_step",
]
