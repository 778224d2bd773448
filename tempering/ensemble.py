"""Ensembles for free: the cold chain's snapshots, and a population's final models.

Parallel tempering is a sampler: over the rounds, a sequence of models visits
the coldest rung. Averaging their predictions, a snapshot ensemble of the cold
chain as SG-MCMC ensembles average their samples, costs no extra training.
:func:`cold_chain_ensemble` wraps a move (the exchange) so that, every
``every`` rounds from round ``after`` on, the replica that trained on rung 0
in that round adds its predicted class probabilities on fixed inputs (the
validation and test examples) to a running sum, inside the same jitted move:

```python
from tempering import ensemble

move = ensemble.cold_chain_ensemble(
    tp.moves.exchange_move(ladder, c="auto", adapt_rounds=5),
    np.concatenate([x_val, x_test]), every=1, after=10,
)
result = tp.train(state, key, move, tp.RunData(train, validation), config)
probabilities = ensemble.mean_probabilities(result.move_state)  # (N, K)
```

The snapshot is taken before the round's move, so it is the model that
trained with the coldest hyperparameters during the round. A round whose move
the driver skips adds nothing (``RunConfig(move_at_end=False)`` skips the
last round's), nor does a diverged rung-0 replica (counted in
``EnsembleState.skipped``). :func:`replicas_probabilities` is the other
ensemble: the mean prediction of every replica of a state, e.g. the grid's M
final models (a hyperparameter ensemble).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from tempering._caller import warn
from tempering.config import check_int
from tempering.moves import as_move
from tempering.sharding import to_host
from tempering.state import ReplicaState, check_state, eval_outputs
from tempering.step import check_model_takes, chunked, replica_outputs

__all__ = [
    "ColdChainEnsemble",
    "EnsembleState",
    "cold_chain_ensemble",
    "mean_probabilities",
    "replicas_probabilities",
]


class EnsembleState(NamedTuple):
    """The wrapped move's state and the cold chain's summed predictions."""

    inner: Any  # the wrapped move's state
    probability_sum: jax.Array  # shape=(N, K), float32, sum over snapshots
    snapshots: jax.Array  # shape=(), int32, snapshots summed
    skipped: jax.Array  # shape=(), int32, due snapshots left out: diverged

    @property
    def rungs(self) -> Any:
        """The wrapped move's rungs (so the driver records them)."""
        return getattr(self.inner, "rungs", None)


def _chunks(inputs: np.ndarray, size: int) -> jax.Array:
    """``(C, size, ...)``: the inputs padded to whole chunks (:func:`~tempering.step.chunked`)."""
    return chunked(inputs, np.zeros(len(inputs), np.int32), size)[0]


def _probabilities(state: ReplicaState, replica: jax.Array, chunks: jax.Array):
    """Softmax outputs of one replica (a traced index) on every chunk: ``(C, b, K)``."""
    pick = functools.partial(jax.tree.map, lambda a: a[replica])
    params, stats, hyperparams = pick(
        (state.params, state.batch_stats, state.hyperparams)
    )

    def chunk(x):
        return jax.nn.softmax(eval_outputs(state, params, stats, hyperparams, x), -1)

    return jax.lax.map(chunk, chunks)


@struct.dataclass
class ColdChainEnsemble:
    """A move that also sums the cold chain's predictions (:func:`cold_chain_ensemble`)."""

    move: Any  # the wrapped move (a pytree move: its arrays are arguments)
    chunks: jax.Array  # shape=(C, b, ...), the inputs in chunks (padded)
    num_examples: int = struct.field(pytree_node=False)
    every: int = struct.field(pytree_node=False, default=1)
    after: int = struct.field(pytree_node=False, default=0)

    def init(self, state: ReplicaState) -> EnsembleState:
        """The wrapped move's state and an empty sum.

        Raises:
            TypeError: ``state`` is no ReplicaState.
            ValueError: the wrapped move keeps no rungs (nothing is "cold"), or
                the model cannot take the inputs or gives no ``(N, K)``
                class scores for them.
        """
        check_state(state, "cold_chain_ensemble's init")
        inner = self.move.init(state)
        if getattr(inner, "rungs", None) is None:
            raise ValueError(
                "cold_chain_ensemble needs a move whose state keeps rungs (the "
                f"exchange); {type(self.move).__name__}'s state has none"
            )
        classes = _num_classes(state, self.chunks[0], "cold_chain_ensemble's inputs")
        total = jnp.zeros((self.num_examples, classes), jnp.float32)
        return EnsembleState(inner, total, jnp.int32(0), jnp.int32(0))

    def step(
        self,
        key: jax.Array,
        state: ReplicaState,
        move_state: EnsembleState,
        scores: jax.Array,
        round_index: jax.Array,
    ) -> tuple[ReplicaState, EnsembleState, Any]:
        """Adds the rung-0 replica's predictions when due, then runs the wrapped move.

        A diverged rung-0 replica (an infinite score from the driver, or
        predictions that are not finite) adds nothing: it counts in
        ``skipped``, not ``snapshots``.
        """
        inner, total, snapshots, skipped = move_state
        cold = jnp.argmin(inner.rungs)  # the replica that trained on rung 0
        probs = _probabilities(state, cold, self.chunks)
        probs = probs.reshape(-1, probs.shape[-1])[: self.num_examples]
        due = (round_index >= self.after) & (
            (round_index - self.after) % self.every == 0
        )
        finite = jnp.isfinite(scores[cold]) & jnp.all(jnp.isfinite(probs))
        total = total + jnp.where(due & finite, probs, 0.0)
        state, inner, info = self.move.step(key, state, inner, scores, round_index)
        snapshots = snapshots + (due & finite).astype(jnp.int32)
        skipped = skipped + (due & ~finite).astype(jnp.int32)
        return state, EnsembleState(inner, total, snapshots, skipped), info


def cold_chain_ensemble(
    move: Any,
    inputs: jax.Array | np.ndarray,
    *,
    every: int = 1,
    after: int = 0,
    chunk_size: int = 1000,
) -> ColdChainEnsemble:
    """Wraps ``move`` to average the cold chain's predictions on ``inputs``.

    Args:
        move: a move whose state keeps rungs (:func:`tempering.moves.exchange_move`,
            PT or the grid).
        inputs: ``(N, ...)`` examples to predict (e.g. validation and test
            inputs, concatenated); they stay on the device with the move.
        every: rounds between snapshots (>= 1).
        after: the first round that adds a snapshot (a burn-in, >= 0).
        chunk_size: examples per forward pass (bounds memory).

    Returns:
        A :class:`ColdChainEnsemble` for :func:`tempering.train`; its state's
        :func:`mean_probabilities` is the ensemble's prediction.

    Raises:
        TypeError: ``every``, ``after`` or ``chunk_size`` not an int.
        ValueError: ``every`` or ``chunk_size`` < 1, ``after`` < 0, no inputs.
    """
    for name, value, low in (("every", every, 1), ("after", after, 0),
                             ("chunk_size", chunk_size, 1)):  # fmt: skip
        check_int(value, name, low)
    inputs = _check_inputs(inputs)
    size = min(int(chunk_size), len(inputs))
    return ColdChainEnsemble(
        as_move(move), _chunks(inputs, size), len(inputs), int(every), int(after)
    )


def _check_inputs(inputs: Any) -> np.ndarray:
    inputs = np.asarray(inputs)
    if inputs.ndim < 1 or len(inputs) == 0:
        raise ValueError(
            f"inputs must hold examples, shape (N, ...), got {inputs.shape}"
        )
    return inputs


def _num_classes(state: ReplicaState, inputs: Any, name: str) -> int:
    """K, from the model's ``(N, K)`` outputs on ``inputs``, else a ValueError."""
    outputs = check_model_takes(state, inputs, name, axis=0)
    if (
        not isinstance(outputs, jax.ShapeDtypeStruct)
        or outputs.ndim != 2
        or outputs.shape[-1] < 2
    ):
        shape = getattr(outputs, "shape", type(outputs).__name__)
        raise ValueError(
            f"{name}: the model gives outputs of shape {shape} for one example; "
            "an ensemble averages class probabilities (a softmax over the "
            "model's (N, K) class scores, K >= 2): it needs a classifier"
        )
    return int(outputs.shape[-1])


def mean_probabilities(move_state: EnsembleState) -> np.ndarray:
    """The ensemble's ``(N, K)`` mean predicted probabilities (NaN before a snapshot)."""
    total = np.asarray(jax.device_get(move_state.probability_sum), np.float64)
    count = int(jax.device_get(move_state.snapshots))
    return total / count if count else np.full_like(total, np.nan)


def replicas_probabilities(
    state: ReplicaState, inputs: jax.Array | np.ndarray, *, chunk_size: int = 1000
) -> np.ndarray:
    """The mean predicted probabilities of the M replicas, ``(N, K)``.

    The ensemble of a population's models, e.g. the grid's M final models. A
    replica whose predictions are not all finite (a diverged one, which the
    default ``on_diverge="flag"`` keeps) is left out, with a warning naming
    it.

    Raises:
        ValueError: every replica's predictions are non-finite, or bad
            ``inputs`` (not ``(N, ...)``, not the model's, or giving no
            ``(N, K)`` class scores) or a ``chunk_size`` < 1.
        TypeError: a ``chunk_size`` that is not an int.
    """
    check_state(state, "replicas_probabilities")
    check_int(chunk_size, "chunk_size", 1)
    inputs = _check_inputs(inputs)
    _num_classes(state, inputs, "replicas_probabilities' inputs")
    chunks = _chunks(inputs, min(int(chunk_size), len(inputs)))
    keep = np.ones(state.num_replicas, bool)
    means, finite = _softmax_means(state, chunks, keep)
    kept = np.all(finite, axis=0)  # shape=(M,)
    if not kept.any():
        raise ValueError(
            "every replica's predictions are non-finite (NaN or inf): there is no "
            "ensemble to average; check history.diverged"
        )
    if not kept.all():
        warn(
            f"replicas {np.flatnonzero(~kept).tolist()} predict non-finite "
            "probabilities (diverged) and are left out of the ensemble",
            RuntimeWarning,
        )
        if not np.array_equal(finite, np.broadcast_to(kept, finite.shape)):
            means, _ = _softmax_means(state, chunks, kept)  # finite in some chunks
    return np.concatenate(means)[: len(inputs)]


def _softmax_means(
    state: ReplicaState, chunks: jax.Array, keep: np.ndarray
) -> tuple[list[np.ndarray], np.ndarray]:
    """The kept replicas' mean softmax outputs, per chunk.

    Returns:
        Per chunk ``(b, K)``: the mean over the replicas in ``keep`` whose
        outputs on it are finite; and ``(C, M)``: which replicas' were.
    """
    # over several processes the (M,) finite flags are split between them
    out = [to_host(_softmax_mean(state, x, keep)) for x in chunks]
    return [total for total, _ in out], np.stack([finite for _, finite in out])


@jax.jit
def _softmax_mean(
    state: ReplicaState, x: jax.Array, keep: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """One chunk's ``(b, K)`` mean of :func:`_softmax_means`, and ``(M,)`` finite."""
    probs = jax.nn.softmax(replica_outputs(state, x), -1)  # shape=(M, b, K)
    finite = jnp.all(jnp.isfinite(probs), axis=(1, 2))  # shape=(M,)
    used = finite & keep  # shape=(M,)
    summed = jnp.where(used[:, None, None], probs, 0.0).sum(axis=0)
    return summed / jnp.maximum(used.sum(), 1).astype(summed.dtype), finite
