"""tempering: hyperparameter parallel tempering for neural networks in JAX.

The concepts a user writes code against are here. The package is one module a
concept: the replicas (:mod:`tempering.state`), their hyperparameters
(:mod:`tempering.hyperparams`), the fused step and evaluation
(:mod:`tempering.step`), the ladder (:mod:`tempering.ladder`), a run's settings
(:mod:`tempering.config`), its records (:mod:`tempering.records`), the driver
(:mod:`tempering.driver`) and the moves (:mod:`tempering.moves`: the exchange,
:mod:`tempering.multi`, :mod:`tempering.pbt`); the plumbing (segments and
loops, the vectorisation rewrite, data sources) sits in :mod:`tempering.loops`,
:mod:`tempering.fast`, :mod:`tempering.sources`; and :mod:`tempering.diffusion`,
:mod:`tempering.zoo.datasets`, :mod:`tempering.zoo.models`, :mod:`tempering.loggers`,
:mod:`tempering.sharding`, :mod:`tempering.checkpoint`,
:mod:`tempering.divergence`, :mod:`tempering.adaptation` and
:mod:`tempering.diagnostics` serve them.
"""

from tempering import diagnostics, frontends, layers, plots
from tempering.compilation_cache import enable_compilation_cache
from tempering.config import RunConfig, RunData
from tempering.divergence import DivergenceError
from tempering.driver import RunResult, train
from tempering.exchange import ExchangeInfo, exchange
from tempering.hyperparams import get_hyperparams, set_hyperparams
from tempering.ladder import Ladder, geometric_ladder, linear_ladder, make_ladder
from tempering.layers import Dropout
from tempering.moves import Move, exchange_move, identity_move
from tempering.multi import multi_exchange_move
from tempering.pbt import (
    PBTConfig,
    PBTResult,
    PBTSummary,
    Prior,
    pbt_config,
    pbt_move,
    pbt_train,
)
from tempering.records import History, RoundRecord
from tempering.replay import best_schedule, replay_schedule
from tempering.sharding import replicate, shard_replicas
from tempering.sources import BatchError
from tempering.state import EvalMetrics, ReplicaState, create_replicas, replica, sgd
from tempering.step import evaluate, train_step
from tempering.training import PTResult, PTSummary, pt_train

__version__ = "0.4.0"

__all__ = [
    "BatchError",
    "DivergenceError",
    "Dropout",
    "EvalMetrics",
    "ExchangeInfo",
    "History",
    "Ladder",
    "Move",
    "PBTConfig",
    "PBTResult",
    "PBTSummary",
    "PTResult",
    "PTSummary",
    "Prior",
    "ReplicaState",
    "RoundRecord",
    "RunConfig",
    "RunData",
    "RunResult",
    "best_schedule",
    "create_replicas",
    "diagnostics",
    "enable_compilation_cache",
    "frontends",
    "evaluate",
    "exchange",
    "exchange_move",
    "geometric_ladder",
    "get_hyperparams",
    "identity_move",
    "layers",
    "linear_ladder",
    "make_ladder",
    "multi_exchange_move",
    "pbt_config",
    "pbt_move",
    "pbt_train",
    "plots",
    "pt_train",
    "replay_schedule",
    "replica",
    "replicate",
    "set_hyperparams",
    "shard_replicas",
    "sgd",
    "train",
    "train_step",
]
