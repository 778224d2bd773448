"""M replicas as one stacked pytree: the state, its creation, and the model contract.

Every per-replica leaf has leading axis M. Replica m's hyperparameters are
``state.hyperparams[name][m]``: one mapping for the optimiser's injected
hyperparameters and the model's per-replica inputs (see
:mod:`tempering.hyperparams`).

Models. Any model reaches the engine through one interface, a *frontend*
(:mod:`tempering.frontends`): a flax linen module, a flax.nnx module (or a
function building one from ``nnx.Rngs``), an Equinox module (or a function of a
key), or a pair of plain functions. The fused step runs it in training mode
and every evaluation in inference mode; per-replica inputs (a laddered
dropout rate, ``model_inputs``) are keywords of its call and are traced, so
use the frontend's traced dropout (:class:`tempering.Dropout` for linen,
``tempering.frontends.nnx.Dropout``, ``tempering.frontends.equinox.Dropout``).
The fused step and the evaluation are :mod:`tempering.step`.
"""

from __future__ import annotations

import dataclasses
import functools
import operator
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, cast

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from numpy.typing import ArrayLike

from tempering._caller import warn
from tempering._quick_jit import quick_jit
from tempering.fast import single_replica_rewrite
from tempering.frontends import DEFAULT_TRAIN_KWARG, as_frontend, takes_batch_mask
from tempering.hyperparams import (
    DATA_HYPERPARAMETERS,
    check_number,
    check_values,
    injected_leaves,
    injected_names,
    raise_unknown_names,
    read_injected,
    scheduled_names,
    set_hyperparams,
)
from tempering.ladder import Ladder, as_ladder, assign_rungs, check_ladder

__all__ = [
    "EvalMetrics",
    "LossFn",
    "MetricsFn",
    "ReplicaState",
    "StepInfo",
    "check_key",
    "create_replicas",
    "cross_entropy",
    "default_metrics",
    "eval_outputs",
    "model_hyperparams",
    "replica",
    "sgd",
]

PyTree = Any

LossFn = Callable[[jax.Array, jax.Array], jax.Array]

MetricsFn = Callable[[jax.Array, jax.Array], Mapping[str, jax.Array]]


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-example softmax cross entropy with integer labels, shape ``(B,)``."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def default_metrics(outputs: jax.Array, targets: jax.Array) -> dict[str, jax.Array]:
    """Per-example accuracy for classification, nothing otherwise.

    Classification is recognised from the shapes: integer targets ``(B, ...)``
    with outputs ``(B, ..., classes)``.
    """
    if jnp.issubdtype(targets.dtype, jnp.integer) and outputs.ndim == targets.ndim + 1:
        # a diverged replica's NaN outputs are never right (argmax would say 0)
        finite = jnp.all(jnp.isfinite(outputs), axis=-1)
        predicted = jnp.argmax(outputs, -1).astype(jnp.int32)
        correct = (predicted == targets.astype(jnp.int32)) & finite
        return {"accuracy": correct.reshape(correct.shape[0], -1).mean(axis=1)}
    return {}


@struct.dataclass
class ReplicaState:
    """The stacked state of M replicas (a pytree; model, optimiser, loss static).

    Like ``flax.training.train_state.TrainState``, the model, the optimiser and
    the loss are static fields so that ``pt_train(state, ladder, key)`` needs
    nothing else; they are part of the jit cache key, never traced. How the
    step is vectorised or looped is a setting of the functions that run it.
    """

    params: PyTree  # leaves shape=(M, ...)
    batch_stats: PyTree  # leaves shape=(M, ...); {} for models without BatchNorm
    opt_state: PyTree  # leaves shape=(M, ...)
    hyperparams: dict[str, jax.Array]  # name -> shape=(M,), float32
    step: jax.Array  # shape=(), dtype=int32; SGD steps taken
    # The model's frontend (tempering.frontends): LinenModel, Nnx, Equinox, ...
    model: Any = struct.field(pytree_node=False)
    tx: optax.GradientTransformation = struct.field(pytree_node=False)
    loss_fn: LossFn = struct.field(pytree_node=False, default=cross_entropy)
    # Names in ``hyperparams`` passed to the model's __call__ (the rest are the
    # optimiser's injected hyperparameters).
    model_inputs: tuple[str, ...] = struct.field(pytree_node=False, default=())
    # Names the optimiser computes from an optax schedule (not per-replica).
    scheduled: tuple[str, ...] = struct.field(pytree_node=False, default=())

    if TYPE_CHECKING:  # added by flax.struct.dataclass at run time

        def replace(self, **updates: Any) -> ReplicaState:
            """A copy with the given fields replaced."""
            ...

    def __repr__(self) -> str:
        """A summary: M, the model, its size, the step and the hyperparameters.

        A notebook shows it for a state (and a result holding one) instead of
        every replica's weights; those are its fields (``state.params``, ...).
        """
        try:
            num = self.num_replicas
            size = sum(int(np.size(leaf)) for leaf in jax.tree.leaves(self.params))
            values = ", ".join(
                f"{name}={_value_range(value)}"
                for name, value in sorted(self.hyperparams.items())
            )
            step = _value_range(self.step)
        except Exception:  # noqa: BLE001 - a repr never fails (traced, abstract)
            return f"ReplicaState(model={getattr(self.model, 'name', '?')})"
        stats = "yes" if jax.tree.leaves(self.batch_stats) else "none"
        return (
            f"ReplicaState({num} replicas of {self.model.name} "
            f"({self.model.kind}), {size // max(num, 1):,} parameters each, "
            f"step={step}, hyperparams: {values or 'none'}, batch_stats={stats})"
        )

    @property
    def num_replicas(self) -> int:
        """Number of replicas M: the leading axis of the stacked leaves."""
        leaves = jax.tree.leaves((self.params, self.hyperparams, self.opt_state))
        return int(leaves[0].shape[0])

    @property
    def learning_rate(self) -> jax.Array:
        """Per-replica learning rate, shape ``(M,)``."""
        return self.hyperparams["learning_rate"]

    @property
    def dropout_rate(self) -> jax.Array:
        """Per-replica dropout rate, shape ``(M,)``."""
        return self.hyperparams["dropout_rate"]


def _value_range(value: Any) -> str:
    """``"0.5"`` for one value or M alike, ``"0.01..0.1"`` for a range (numbers)."""
    array = np.asarray(value)  # a tracer raises: its repr is the short one
    if array.size == 0:
        return "[]"
    low, high = array.min(), array.max()
    return f"{low:.4g}" if low == high else f"{low:.4g}..{high:.4g}"


class StepInfo(NamedTuple):
    """Training metrics of one fused step."""

    loss: jax.Array  # shape=(M,), float32, mean training loss of the batch


class EvalMetrics(NamedTuple):
    """Per-replica evaluation metrics."""

    loss: jax.Array  # shape=(M,), mean loss; +inf where not finite
    metrics: dict[str, jax.Array]  # name -> shape=(M,), mean over examples

    @property
    def accuracy(self) -> jax.Array:
        """``metrics["accuracy"]``, shape ``(M,)`` (classification only)."""
        if "accuracy" not in self.metrics:
            raise AttributeError(
                "no accuracy: the metrics function returned "
                f"{sorted(self.metrics)} (accuracy needs integer targets)"
            )
        return self.metrics["accuracy"]


def sgd(
    learning_rate: float = 0.01,
    momentum: float | None = None,
    *,
    nesterov: bool = False,
    weight_decay: float = 0.0,
) -> optax.GradientTransformationExtraArgs:
    """SGD (optionally momentum and L2 weight decay) with an injected lr.

    Only the learning rate is a hyperparameter of the replicas (a ladder's or
    ``set_hyperparams``'); ``momentum`` and ``weight_decay`` are the same for
    every replica. To ladder them, inject them:
    ``optax.inject_hyperparams(optax.sgd)(learning_rate=0.05, momentum=0.9)``,
    or :func:`tempering.diffusion.l2_sgd` for ``weight_decay``.

    Args:
        learning_rate: initial learning rate (a ladder overwrites it per replica).
        momentum: momentum coefficient, or None for plain SGD; one value for
            every replica.
        nesterov: use Nesterov momentum.
        weight_decay: L2 coefficient added to the gradient (``wd * params``);
            one value for every replica.

    Returns:
        An ``optax.inject_hyperparams`` transformation whose
        ``hyperparams["learning_rate"]`` is float32. Equal arguments give the
        same object: the optimiser is part of what JAX caches compiled programs
        under, so a notebook cell run again (a new ``tp.sgd(0.05)``) finds the
        programs the last run compiled instead of compiling them anew.
    """
    _check_sgd_arguments(learning_rate, momentum, nesterov, weight_decay)
    # optax injects an int as an int32 (no float hyperparameter to ladder), and
    # the cache would take tp.sgd(1.0) for an earlier tp.sgd(1)
    learning_rate = as_float_if_int(learning_rate)
    try:
        return _cached_sgd(learning_rate, momentum, nesterov, weight_decay)
    except TypeError:  # an unhashable argument (an array): built afresh
        return _sgd(learning_rate, momentum, nesterov, weight_decay)


def _check_sgd_arguments(
    learning_rate: Any, momentum: Any, nesterov: Any, weight_decay: Any
) -> None:
    """Clear errors for :func:`sgd`'s arguments (optax fails later, after compiling)."""
    if not callable(learning_rate):  # a schedule is optax's to call
        value = check_number(learning_rate, "learning_rate")
        if not (np.isfinite(value) and value > 0):
            raise ValueError(f"learning_rate must be finite and > 0, got {value}")
    if momentum is not None:
        value = check_number(momentum, "momentum")
        if not 0 <= value < 1:
            raise ValueError(
                f"momentum must lie in [0, 1) (or be None for plain SGD), got {value}"
            )
    if not isinstance(nesterov, bool | np.bool_):
        raise TypeError(f"nesterov must be True or False, got {nesterov!r}")
    value = check_number(weight_decay, "weight_decay")
    if not (np.isfinite(value) and value >= 0):
        raise ValueError(f"weight_decay must be finite and >= 0, got {value}")


def as_float_if_int(value: Any) -> Any:
    """A Python or numpy integer as a float (bools and the rest unchanged)."""
    if isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_):
        return float(value)
    return value


def _sgd(learning_rate, momentum, nesterov, weight_decay):
    def factory(learning_rate):
        parts = [optax.add_decayed_weights(weight_decay)] if weight_decay else []
        parts.append(optax.sgd(learning_rate, momentum=momentum, nesterov=nesterov))
        return optax.chain(*parts)

    return optax.inject_hyperparams(factory, hyperparam_dtype=jnp.float32)(
        learning_rate=learning_rate
    )


_cached_sgd = functools.lru_cache(maxsize=64)(_sgd)


def eval_outputs(
    state: ReplicaState,
    params: PyTree,
    batch_stats: PyTree,
    hyperparams: Mapping[str, jax.Array],
    x: jax.Array,
) -> jax.Array:
    """One replica's outputs in inference mode (no dropout, running statistics)."""
    outputs, _ = state.model.apply(
        params, batch_stats, x, train=False, key=None,
        inputs=model_hyperparams(state, hyperparams),
    )  # fmt: skip
    return cast(jax.Array, outputs)


def model_hyperparams(state: ReplicaState, hyperparams: Mapping) -> dict:
    """The state's per-replica hyperparameters that are model inputs."""
    return {name: hyperparams[name] for name in state.model_inputs}


# Call keywords that switch a model between training and inference, as flax,
# Equinox, Haiku and Keras users name them: True in training, True in inference.
_TRAINING_KEYWORDS = (
    "train", "training", "is_train", "is_training", "train_mode", "training_mode",
)  # fmt: skip
_INFERENCE_KEYWORDS = (
    "deterministic", "inference", "use_running_average", "eval", "eval_mode",
    "evaluation", "is_eval", "inference_mode", "is_inference", "test_mode",
    "is_test",
)  # fmt: skip
_MODE_KEYWORDS = _TRAINING_KEYWORDS + _INFERENCE_KEYWORDS


def _check_mode_keywords(
    model: Any, train_kwarg: str | None, names: set[str], defaults: dict[str, Any]
) -> None:
    """A ValueError for a call whose own mode switch would win.

    nnx and Equinox modules switch mode by ``module.eval()`` /
    ``inference_mode``, which the library sets; a call keyword with a default
    of its own (``deterministic: bool = False``) overrides that, and the
    library passes only ``train_kwarg``: evaluation would run in training mode
    (or training in inference mode). A linen module or functions given
    ``train_kwarg=None`` get no mode at all, so such a default decides both.
    """
    if model.kind in ("functions", "linen") and train_kwarg in names:
        return  # the call reads the mode the library passes
    if model.kind == "linen" and train_kwarg is not None:
        return  # a **kwargs call: linen modules have no mode of their own
    overriding = sorted(
        name for name in _MODE_KEYWORDS
        if name in names and name != train_kwarg and defaults.get(name) is not None
    )  # fmt: skip
    if overriding and model.kind in ("functions", "linen") and train_kwarg is None:
        name = overriding[0]
        raise ValueError(
            f"{model.name} takes {name}={defaults[name]!r}, a mode switch, but "
            "train_kwarg=None passes no mode: that default would decide the mode "
            "in training and in evaluation alike. "
            + (
                f"Pass train_kwarg={name!r}: the library then passes it True in "
                "training and False in evaluation"
                if name in _TRAINING_KEYWORDS
                else f"Give {'apply' if model.kind == 'functions' else '__call__'} "
                "a keyword that is True in training (e.g. train, passing "
                f"{name}=not train to its layers) and pass train_kwarg with its "
                "name"
            )
        )
    if overriding and model.kind == "functions":  # train_kwarg lands in **kwargs
        name = overriding[0]
        raise ValueError(
            f"{model.name} takes {name}={defaults[name]!r}, a mode switch the "
            f"library does not set (it passes train_kwarg={train_kwarg!r}, which "
            "apply takes only through **kwargs), so that default would decide "
            f"the mode in training and in evaluation alike: pass "
            f"train_kwarg={name!r}"
            + (
                " with its sense made True in training"
                if name not in _TRAINING_KEYWORDS
                else ""
            )  # fmt: skip
        )
    if overriding:
        name = overriding[0]
        raise ValueError(
            f"{model.name}.__call__ takes {name}={defaults[name]!r}, a mode switch "
            f"the library does not set (it sets train_kwarg={train_kwarg!r}), so "
            "that default would decide the mode in training and in evaluation "
            "alike. Give it the default None and pass it on to the layers, so "
            "that the module's own mode (set by the library) decides"
            + (
                f"; or pass train_kwarg={name!r}: the library then passes it "
                "True in training and False in evaluation"
                if name in _TRAINING_KEYWORDS
                else ""
            )
        )


def _check_train_kwarg_taken(
    model: Any, train_kwarg: str | None, names: set[str], var_kw: bool
) -> None:
    """A ValueError for a ``train_kwarg`` the model's call does not take.

    Linen's is required; nnx and Equinox set their modules' own mode and pass
    the default ``"train"`` only to a call that takes it, but a name the user
    gave would be silently dropped (training in the call's default mode).
    """
    if train_kwarg is None or train_kwarg in names or var_kw:
        return
    if model.kind == "linen":
        inference = [name for name in _INFERENCE_KEYWORDS if name in names]
        if inference:
            raise ValueError(
                f"{model.name}.__call__ has no keyword {train_kwarg!r} but takes "
                f"{inference[0]}, a switch that is True in inference, and the "
                "library passes its train_kwarg True in training: give __call__ a "
                f"train keyword, passing {inference[0]}=not train to its layers "
                "(train_kwarg='train', the default), or pass train_kwarg with the "
                "name of another keyword that is True in training"
            )
        raise ValueError(
            f"{model.name}.__call__ has no keyword {train_kwarg!r}: pass "
            "train_kwarg='<its name>' to create_replicas to rename it, or "
            "train_kwarg=None for a model without a train mode"
        )
    if model.kind == "functions":
        raise ValueError(
            f"train_kwarg={train_kwarg!r}, but {model.name} takes no keyword "
            f"{train_kwarg!r} (it takes {sorted(names)}): the library passes it "
            "True in training and False in evaluation. Pass train_kwarg='<its "
            "name>' with the name of apply's keyword that is True in training, "
            "or train_kwarg=None for an apply without a train mode"
        )
    if model.kind in ("nnx", "equinox") and train_kwarg != DEFAULT_TRAIN_KWARG:
        raise ValueError(
            f"train_kwarg={train_kwarg!r}, but {model.name}.__call__ takes no "
            f"keyword {train_kwarg!r} (it takes {sorted(names - {'self'})}): it "
            "would never be passed. Pass train_kwarg='<its name>' with the name "
            "of the call's keyword that is True in training, or leave "
            "train_kwarg out: the library sets the module's own mode "
            "(module.train() / module.eval(), eqx.nn.inference_mode)"
        )


def _resolve_model_inputs(
    model: Any, train_kwarg: str | None, model_inputs: Any
) -> tuple[tuple[str, ...], dict[str, Any]]:
    """Validated model input names and the defaults of the model's call."""
    names, var_kw, defaults = model.keywords()
    kind = model.name
    if train_kwarg in _INFERENCE_KEYWORDS:
        raise ValueError(
            f"train_kwarg={train_kwarg!r} names a switch that is True in "
            "inference, but the library passes train_kwarg=True in training and "
            "False in evaluation: the modes would be swapped. Give the model's "
            "call a keyword that is True in training (e.g. train, passing "
            f"{train_kwarg}=not train to its layers) and pass train_kwarg with "
            "its name"
            + (
                ""
                if model.kind == "linen"
                else "; or pass train_kwarg=None: the library sets the module's "
                "own mode (module.eval() / inference mode)"
            )
        )
    _check_train_kwarg_taken(model, train_kwarg, names, var_kw)
    _check_mode_keywords(model, train_kwarg, names, defaults)
    if isinstance(model_inputs, str) and model_inputs == "auto":
        return (("dropout_rate",) if "dropout_rate" in names else ()), defaults
    if isinstance(model_inputs, str):
        model_inputs = (model_inputs,)
    if not isinstance(model_inputs, Sequence) or not all(
        isinstance(n, str) for n in model_inputs
    ):
        raise TypeError(
            "model_inputs must be 'auto', a keyword name or a tuple of them, e.g. "
            f"('dropout_rate',), got {model_inputs!r}"
        )
    model_inputs = tuple(model_inputs)
    missing = [n for n in model_inputs if n not in names and not var_kw]
    if missing:
        raise ValueError(
            f"model_inputs {missing} are not keywords of {kind}.__call__ "
            f"(it takes {sorted(names - {'self'})}); pass model_inputs=(...) with "
            "its names, or model_inputs=() for a model without per-replica inputs"
        )
    return model_inputs, defaults


def _init_replica(key, sample_input, inputs, *, model, tx):
    """``(params, stats, opt_state)`` of one replica."""
    params, stats = model.init(key, sample_input, inputs)
    return params, stats, tx.init(params)


@functools.partial(
    quick_jit, static_argnames=("model", "tx", "num_replicas", "same_init")
)
def _init_replicas(key, sample_input, inputs, *, model, tx, num_replicas, same_init):
    """``(params, stats, opt_state)`` of M replicas, stacked.

    Replica m is initialised from the m-th key of ``jax.random.split(key, M)``
    (the first for every replica when ``same_init``), one replica at a time:
    the single-replica init in a loop inside one program. XLA compiles the
    single-replica init (random initialisers) several times faster than a
    vmapped one, and one program spares M dispatches and the compiles of
    splitting the keys and stacking the replicas.
    """
    keys = jax.random.split(key, num_replicas)
    if same_init:
        keys = jnp.broadcast_to(keys[:1], keys.shape)
    init = single_replica_rewrite(
        functools.partial(_init_replica, model=model, tx=tx), convolutions=False
    )
    return jax.lax.map(lambda k: init(k, sample_input, inputs), keys)


_TRACER_ERRORS = (
    jax.errors.ConcretizationTypeError,
    jax.errors.TracerBoolConversionError,
    jax.errors.TracerIntegerConversionError,
)


def _check_traced_inputs(
    init, key, model, sample_input, inputs, *, set_by_call=(), ladder_names=(),
    batch_mask=False,
):  # fmt: skip
    """Fails early, with the fix, unless the model takes traced per-replica inputs.

    Checked for init and for the model's call in each mode (linen's init made
    the inference call), by tracing them (nothing compiles): a model the
    library cannot call fails here, not as a shape error later. The training
    call gets ``batch_mask`` where a per-replica batch size will pass it. An
    input in ``set_by_call`` (a ladder's or ``hyperparams``' name) that no
    traced call reads is refused where the ladder sets it (its exchanges
    would compare noise), warned of where ``hyperparams`` does.
    """
    mask = {"batch_mask": np.ones(sample_input.shape[:1], bool)}  # no eager op
    masked = batch_mask and takes_batch_mask(model)  # as step passes it

    def apply(params, stats, traced, train):
        passed = {**traced, **mask} if train and masked else traced
        return model.apply(
            params, stats, sample_input, train=train, key=jax.random.key(0),
            inputs=passed,
        )  # fmt: skip

    def traced_inputs_refused() -> TypeError:
        return TypeError(
            f"{model.name} cannot take a per-replica (traced) value of "
            f"{sorted(inputs)}: {model.dropout_fix}, or pass model_inputs=() to "
            "create_replicas to keep the rate fixed"
        )

    try:
        params, stats, opt_state = jax.eval_shape(init, key, sample_input, inputs)
    except _TRACER_ERRORS:
        raise traced_inputs_refused() from None
    unread = set(set_by_call)
    for train in (True, False):
        try:
            program = jax.make_jaxpr(functools.partial(apply, train=train))(
                params, stats, inputs
            )
        except _TRACER_ERRORS as error:
            if inputs:
                raise traced_inputs_refused() from None
            raise _uncallable(model, train, sample_input, error) from error
        except Exception as error:  # noqa: BLE001 - re-raised with the cause
            mask_fix = (
                ", and batch_mask (the examples a per-replica batch_size keeps) "
                "to a call that takes **kwargs: give the call a keyword "
                "batch_mask=None (for BatchNorm's mask, or unused)"
            )
            raise _uncallable(
                model, train, sample_input, error, mask_fix if masked and train else ""
            ) from error
        unread &= _unread_inputs(program, params, stats, inputs)
    fix = (
        f"Pass it on to the layer it is for ({model.dropout_fix}), or leave it "
        "out of the ladder and hyperparams"
    )
    laddered = sorted(unread & set(ladder_names))
    if laddered:
        raise ValueError(
            f"{model.name}'s call never reads {laddered}, in training or "
            f"inference, but the ladder sets it per replica: its rungs would "
            f"change nothing and the exchanges would compare noise. {fix}"
        )
    if unread:
        warn(
            f"{model.name}'s call never reads {sorted(unread)} (hyperparams sets "
            f"it), in training or inference: its values change nothing. {fix}",
            UserWarning,
        )
    return stats, opt_state


def _set_by_call(
    start: Mapping[str, Any], given: Mapping[str, Any], ladder: Ladder | None
) -> set[str]:
    """The model inputs this call sets: named by the ladder or ``hyperparams``."""
    named = set(given) | (set() if ladder is None else set(ladder.values))
    return named & set(start)


def _unread_inputs(program: Any, params: Any, stats: Any, inputs: dict) -> set[str]:
    """The names of ``inputs`` that no equation of a traced call reads."""
    skipped = len(jax.tree.leaves((params, stats)))
    flat, _ = jax.tree_util.tree_flatten_with_path(inputs)
    invars = program.jaxpr.invars[skipped:]
    read = {id(v) for eqn in program.jaxpr.eqns for v in eqn.invars}
    read |= {id(v) for v in program.jaxpr.outvars}
    unread = set(inputs)
    for (path, _), var in zip(flat, invars, strict=True):
        if id(var) in read:
            unread.discard(path[0].key)
    return unread


def _with_train_forwarded(model: Any, key, sample_input, inputs) -> Any:
    """The model, passing the default train keyword on to ``**kwargs`` it reads.

    A call ``__call__(self, x, **kwargs)`` that hands its keywords to a
    module reading ``train`` (a wrapper, ``self.backbone(x, **kwargs)``) must
    get it, or its layers run in inference mode while training; one whose
    callee refuses the keyword must not. Traced both ways (nothing compiles):
    passed where the training program changes with it.
    """
    from tempering.frontends import passes_train_kwarg

    if model.kind not in ("nnx", "equinox") or model.train_kwarg != DEFAULT_TRAIN_KWARG:
        return model
    names, var_kw, _ = model.keywords()
    if not var_kw or passes_train_kwarg(model.train_kwarg, names, var_kw):
        return model
    forwarded = dataclasses.replace(model, forwards_train=True)

    def program(frontend):
        init = functools.partial(frontend.init, key, sample_input, inputs)
        params, stats = jax.eval_shape(init)
        apply = functools.partial(
            frontend.apply, x=sample_input, train=True, key=jax.random.key(0),
            inputs=inputs,
        )  # fmt: skip
        return str(jax.make_jaxpr(apply)(params, stats))

    try:
        reads_it = program(model) != program(forwarded)
    except Exception:  # noqa: BLE001 - its callee refuses it (or the call fails:
        return model  # the checks that follow say why)
    return forwarded if reads_it else model


def _uncallable(
    model, train: bool, sample_input, error: Exception, passed: str = ""
) -> Exception:
    """The error of a model the library cannot call, with the model's own cause."""
    mode = "training" if train else "inference"
    kind = TypeError if isinstance(error, TypeError) else ValueError
    if model.kind == "functions":
        how = (
            "The library calls apply(params, x, key=..., **per-replica inputs) "
            "with the train_kwarg (if any), key None in inference"
        )
    else:
        how = (
            "The library calls model(x, **per-replica inputs) with the "
            f"train_kwarg (if any){passed} and keeps only the state it knows (nnx "
            "Variables; Equinox's eqx.nn.State, passed with the model as "
            "(model, state); linen's batch_stats)"
        )
    if model.kind == "equinox":
        how += (
            "; an Equinox model is called on one example at a time (shape "
            f"{tuple(sample_input.shape[1:])}), vmapped over the batch as "
            "Equinox's own examples do: if __call__ was written for a batch, "
            "write it for a single example"
        )
    if model.kind == "equinox" and not train:
        how += (
            "; an Equinox call gets key=None in inference, as Equinox's own "
            "inference calls: guard what splits or draws from it (if key is not None)"
        )
    return kind(
        f"model: {model.name} fails when the library calls it in {mode} "
        f"mode on sample_input (shape {tuple(sample_input.shape)}): "
        f"{type(error).__name__}: {str(error).splitlines()[0][:300].rstrip('.')}"
        f". {how}"
    )


def _check_arguments(
    tx: Any,
    num_replicas: Any,
    hyperparams: Any,
    same_init: Any,
    loss_fn: Any,
) -> None:
    """Types of create_replicas' arguments, each error with the fix."""
    if not (
        callable(getattr(tx, "init", None)) and callable(getattr(tx, "update", None))
    ):
        raise TypeError(
            "tx must be an optax.GradientTransformation, e.g. tempering.sgd(0.05), "
            f"got {type(tx).__name__} {tx!r}"
        )
    if num_replicas is not None and (
        isinstance(num_replicas, bool) or not isinstance(num_replicas, int | np.integer)
    ):
        raise TypeError(
            f"num_replicas must be an int >= 1, got {type(num_replicas).__name__} "
            f"{num_replicas!r}"
        )
    if hyperparams is not None and not isinstance(hyperparams, Mapping):
        raise TypeError(
            "hyperparams must be a mapping name -> starting value, e.g. "
            f"{{'dropout_rate': 0.1}}, got {type(hyperparams).__name__}"
        )
    if not isinstance(same_init, bool | np.bool_):
        raise TypeError(f"same_init must be True or False, got {same_init!r}")
    if not callable(loss_fn):
        raise TypeError(
            "loss_fn must be callable as loss_fn(outputs, targets) -> (B,) per-example "
            f"losses, got {type(loss_fn).__name__} {loss_fn!r}"
        )


def _as_sample(sample_input: Any) -> jax.Array:
    """``sample_input`` as a numeric array with a leading batch axis."""
    try:
        array = jnp.asarray(sample_input)
    except (TypeError, ValueError):  # a dict or ragged lists: ValueError
        array = None
    if array is None or not (
        jnp.issubdtype(array.dtype, jnp.number) or array.dtype == jnp.bool_
    ):
        raise TypeError(
            "sample_input must be a numeric array, one batch of inputs (B, ...), "
            f"got {type(sample_input).__name__}"
            + ("" if array is None else f" of dtype {array.dtype}")
        )
    if array.ndim < 1:
        raise ValueError(
            "sample_input must be one batch of inputs with a leading batch axis, "
            f"shape (B, ...), got shape {array.shape}; e.g. pass x[:1]"
        )
    return array


def create_replicas(
    key: jax.Array,
    model: Any,
    tx: optax.GradientTransformation,
    sample_input: jax.Array | np.ndarray,
    *,
    ladder: Ladder | None = None,
    num_replicas: int | None = None,
    hyperparams: Mapping[str, float] | None = None,
    model_inputs: str | Sequence[str] = "auto",
    same_init: bool = False,
    train_kwarg: str | None = "train",
    loss_fn: LossFn = cross_entropy,
) -> ReplicaState:
    """Initialises M replicas of a model and an optax optimiser.

    Args:
        key: PRNG key for the initial weights.
        model: the model as its library's users hold it
            (:mod:`tempering.frontends`): a flax linen module; an nnx module
            or a function ``build(rngs: nnx.Rngs)`` returning one; an Equinox
            module (or ``(module, state)``) or a function ``build(key)``; or
            ``tempering.frontends.Functions(init, apply)``. An instance (nnx,
            Equinox) gives every replica its weights as the common start, as
            ``same_init=True``; a builder draws each replica's own.
        tx: any optax transformation. Floats it injects with
            ``optax.inject_hyperparams`` (also inside ``optax.chain``) become
            per-replica hyperparameters; see :func:`sgd`.
        sample_input: one batch of inputs, shape ``(B, ...)``; only its shape and
            dtype are used.
        ladder: if given, M is its number of rungs and replica m starts on rung m
            with that rung's hyperparameters.
        num_replicas: M when no ladder is given.
        hyperparams: starting values of any hyperparameter: one number shared
            by every replica, e.g. ``{"dropout_rate": 0.1}``, or one value per
            replica, an array of shape ``(M,)``, e.g.
            ``{"learning_rate": np.array([0.1, 0.2, 0.3])}``; the ladder's
            values take precedence.
        model_inputs: keywords of the model's ``__call__`` that take a
            per-replica value. ``"auto"`` (default): ``("dropout_rate",)`` when
            the model has that keyword, else none.
        same_init: if True every replica starts from the same weights; by
            default each draws its own (independent chains). The optimiser
            state is ``tx.init`` of each replica's weights: randomness an
            optimiser keeps there (``optax.noisy_sgd``'s key) starts alike
            in every replica.
        train_kwarg: name of the model call's train-mode keyword, or None
            (linen: required unless None; nnx and Equinox: passed when the call
            takes it, or takes ``**kwargs`` and reads it, besides their own
            train/eval switch).
        loss_fn: per-example loss ``loss_fn(outputs, targets) -> (B,)``
            (default: softmax cross entropy with integer labels).

    Returns:
        The stacked :class:`ReplicaState`, step 0.

    Raises:
        ValueError: no ladder and no ``num_replicas``, names the model or the
            optimiser does not take, a model input the ladder sets that the
            model's call never reads (one ``hyperparams`` sets: a warning), values out
            of range or of the wrong shape, an unsound ladder; all before the
            init compiles.
        TypeError: arguments of the wrong type (model, tx, key, sample_input,
            hyperparams, loss_fn, ...), a model that cannot take a traced
            per-replica input.
    """
    _check_arguments(tx, num_replicas, hyperparams, same_init, loss_fn)
    model = as_frontend(model, train_kwarg)
    ladder = None if ladder is None else as_ladder(ladder)
    num_replicas = _replica_count(ladder, num_replicas)
    key = check_key(key, "key")
    inputs, defaults = _resolve_model_inputs(model, train_kwarg, model_inputs)
    given = dict(hyperparams or {})
    start = _starting_inputs(inputs, defaults, given, ladder)
    sample_input = _as_sample(sample_input)
    model = _with_train_forwarded(model, key, sample_input, start)
    init = functools.partial(_init_replica, model=model, tx=tx)
    stats, abstract = _check_traced_inputs(
        init, key, model, sample_input, start,
        set_by_call=_set_by_call(start, given, ladder),
        ladder_names=() if ladder is None else tuple(ladder.values),
        batch_mask=bool(_data_names(given, ladder)),
    )  # fmt: skip
    _check_names(model, abstract, start, given, ladder, num_replicas)  # no compile yet
    if _data_names(given, ladder) and jax.tree.leaves(stats):
        _check_batch_mask(model)
    params, stats, opt_state = _init_replicas(
        key, sample_input, start, model=model, tx=tx, num_replicas=num_replicas,
        same_init=same_init,
    )  # fmt: skip
    scheduled = scheduled_names(opt_state)
    _check_one_value_per_name(opt_state)
    values: dict[str, ArrayLike] = {
        name: read_injected(opt_state, name)
        for name in injected_names(opt_state)
        if name not in scheduled
    }
    for name, value in values.items():
        if np.ndim(value) != 1:  # (M,): one number per replica
            raise ValueError(
                f"tx injects {name} as an array of shape {np.shape(value)[1:]}, "
                "but a hyperparameter the replicas hold is one number each: give "
                f"{name} a scalar, or keep it out of the injection "
                "(optax.inject_hyperparams(..., static_args=...))"
            )
    for name, value in values.items():  # tx's own values: ranges and typos too
        if name not in given and (ladder is None or name not in ladder.values):
            check_values(name, value, "tx")
    values.update({
        name: np.broadcast_to(np.float32(given.get(name, v)), (num_replicas,))
        for name, v in start.items()
    })  # fmt: skip
    for name in _data_names(given, ladder):  # given values set (and checked) below
        values[name] = np.ones((num_replicas,), np.float32)
    shared_view = getattr(model, "shared_view", None)  # built: compared by content
    state = ReplicaState(
        params=params,
        batch_stats=stats,
        opt_state=opt_state,
        hyperparams={k: jnp.asarray(v, jnp.float32) for k, v in values.items()},
        step=jnp.zeros((), jnp.int32),
        model=model if shared_view is None else shared_view(),
        tx=tx,
        loss_fn=loss_fn,
        model_inputs=inputs,
        scheduled=scheduled,
    )
    state = set_hyperparams(state, **{k: v for k, v in given.items() if k not in start})
    if ladder is not None:
        check_ladder(state, ladder)
        state = assign_rungs(state, ladder, np.arange(num_replicas))
    return state


def _check_batch_mask(model: Any) -> None:
    """A per-replica batch size with BatchNorm needs the model to take ``batch_mask``."""
    if model.kind == "equinox":  # called per example: no layer sees the batch's mask
        raise ValueError(
            f"a per-replica batch_size with {model.name}, an Equinox model with "
            "state (BatchNorm): eqx.nn.BatchNorm cannot leave examples out, so each "
            "replica's statistics would include examples it does not train on. "
            "Drop the batch_size hyperparameter (set the batch with pt_train's or "
            "pbt_train's batch_size=), or use a model without state"
        )
    if not takes_batch_mask(model):
        raise ValueError(
            f"a per-replica batch_size with {model.name}, which has BatchNorm "
            "statistics: each replica's statistics must come from its own "
            "examples only. Give the model's __call__ a keyword batch_mask=None "
            "and pass it to every nn.BatchNorm(...)(x, mask=...) (reshaped to "
            "broadcast over x, e.g. batch_mask[:, None, None, None]), as "
            "tempering.zoo's BatchNorm models do"
        )


def _data_names(given: Mapping[str, Any], ladder: Ladder | None) -> list[str]:
    """The data hyperparameters (``batch_size``) the call sets per replica."""
    laddered = () if ladder is None else ladder.values
    return [n for n in DATA_HYPERPARAMETERS if n in given or n in laddered]


def _replica_count(ladder: Ladder | None, num_replicas: int | None) -> int:
    """M: the ladder's number of rungs, or ``num_replicas`` without a ladder."""
    if ladder is not None:
        if num_replicas is not None and num_replicas != ladder.num_rungs:
            raise ValueError(
                f"num_replicas={num_replicas} but the ladder has {ladder.num_rungs} "
                "rungs; drop num_replicas or make them equal"
            )
        return ladder.num_rungs
    if num_replicas is None or num_replicas < 1:
        raise ValueError(
            f"give a ladder or num_replicas >= 1, got num_replicas={num_replicas!r}"
        )
    return num_replicas


def _starting_inputs(
    inputs: Sequence[str],
    defaults: Mapping[str, Any],
    given: Mapping[str, Any],
    ladder: Ladder | None,
) -> dict[str, np.float32]:
    """Each model input's value to build the replicas with (0 where the ladder sets it).

    One value per replica given for an input builds them with the first; the
    replicas then hold their own (:func:`create_replicas`).
    """
    start = {}
    for name in inputs:
        value = given.get(name, defaults.get(name))
        if value is None and not (ladder is not None and name in ladder.values):
            raise ValueError(
                f"model input {name!r} has no default: give its starting value "
                f"with hyperparams={{{name!r}: ...}}"
            )
        if value is not None:
            check_values(name, value, "hyperparams")
        start[name] = np.float32(0.0 if value is None else np.ravel(value)[0])
    return start


def _check_names(
    model: Any,
    abstract: Any,
    start: Mapping[str, Any],
    given: Mapping[str, Any],
    ladder: Ladder | None,
    num_replicas: int,
) -> None:
    """Raises unless every name given is a hyperparameter here, with a valid shape.

    A hyperparameter here is a float ``tx`` injects (not on a schedule) or a
    per-replica model input; a value is one number or one per replica.

    Args:
        model: the model's frontend (for the hint of a dropout rate).
        abstract: the shapes of one replica's ``(params, stats, opt_state)``.
        start: the model inputs' starting values.
        given: the ``hyperparams`` argument.
        ladder: the ladder, or None.
        num_replicas: M.
    """
    scheduled = scheduled_names(abstract)
    known = set(injected_names(abstract)) - set(scheduled) | set(start)
    known |= set(DATA_HYPERPARAMETERS)
    copies = injected_leaves(abstract)
    narrow = sorted(
        name
        for name, leaves in copies.items()
        if name not in scheduled
        and any(
            jnp.issubdtype(leaf.dtype, jnp.floating) and leaf.dtype.itemsize < 4
            for leaf in leaves
        )
    )
    if narrow:
        dtype = next(leaf.dtype for leaf in copies[narrow[0]])
        raise ValueError(
            f"tx injects {narrow} as {dtype} (optax.inject_hyperparams casts them "
            "to the params' dtype): every replica would train with values rounded "
            "to it (adam's b2=0.999 becomes 1.0, two learning rates of a ladder one) "
            "while the state records them in float32. Pass "
            "optax.inject_hyperparams(..., hyperparam_dtype=jnp.float32)"
        )
    for where, names in (
        ("hyperparams", given),
        ("ladder", () if ladder is None else ladder.values),
    ):
        unknown = sorted(set(names) - known)
        if unknown:
            hint = ""
            integers = [
                n
                for n in unknown
                if n in copies
                and not any(
                    jnp.issubdtype(leaf.dtype, jnp.floating) for leaf in copies[n]
                )
            ]
            if integers:
                hint = (
                    f". tx injects {integers} as integers (e.g. momentum=0): give "
                    "them as floats to optax.inject_hyperparams (momentum=0.0)"
                )
            if "dropout_rate" in unknown:
                hint += (
                    f". A laddered dropout rate is a keyword of {model.name}'s call "
                    "(e.g. __call__(x, dropout_rate=0.0)) given to a dropout that "
                    f"takes it traced: {model.dropout_fix}"
                )
            raise_unknown_names(known, scheduled, unknown, where, hint)
    both = sorted(set(given) & set(() if ladder is None else ladder.values))
    if both:
        raise ValueError(
            f"{both} given both by the ladder and in hyperparams: the ladder's "
            "rungs set them (hyperparams' values would be dropped); give each "
            "name in one of the two"
        )
    for name, value in given.items():
        shape = check_values(name, value, "hyperparams").shape
        if shape not in ((), (num_replicas,)):
            raise ValueError(
                f"{name} in hyperparams must be one value or one per replica, shape "
                f"({num_replicas},), got shape {shape}"
            )


def _check_one_value_per_name(opt_state: Any) -> None:
    """A ValueError when a name is injected twice with different values.

    The state holds one value per name and replica and writes it into every
    injected copy (``optax.multi_transform`` of two injected optimisers):
    copies that start apart would silently all train with the first's.
    """
    for name, leaves in injected_leaves(opt_state).items():
        if len(leaves) < 2:  # the usual case: nothing to compare, nothing read
            continue
        dtypes = sorted({str(np.asarray(leaf).dtype) for leaf in leaves})
        if len({np.dtype(d).kind for d in dtypes}) > 1:
            raise ValueError(
                f"tx injects {name} {len(leaves)} times with dtypes {dtypes} (e.g. "
                f"{name}=0 in one optimiser and {name}=0.0 in another): the "
                "replicas' float values would be truncated in the integer copy. "
                f"Write {name} as a float in every optimiser (e.g. {name}=0.0)"
            )
        first = np.asarray(leaves[0])
        if any(not np.array_equal(np.asarray(leaf), first) for leaf in leaves[1:]):
            values = sorted({float(np.asarray(leaf).ravel()[0]) for leaf in leaves})
            raise ValueError(
                f"tx injects {name} {len(leaves)} times with different values "
                f"{values} (e.g. optax.multi_transform of two injected optimisers): "
                "the replicas hold one value per name, written into every copy, so "
                "all would train with the first. Give the copies one value, or "
                f"give one of them a fixed (not injected) {name}"
            )


@functools.cache
def _raw_key_shape(impl: str) -> tuple[int, ...]:
    """The shape of ``jax.random.PRNGKey(0)`` under the default PRNG ``impl``."""
    return tuple(jax.eval_shape(lambda: jax.random.PRNGKey(0)).shape)


def check_key(key: Any, name: str) -> jax.Array:
    """``key`` as a single PRNG key (new-style or raw), else a clear error naming ``name``.

    A raw key (``jax.random.PRNGKey``) has the default implementation's shape:
    (2,) for threefry, (4,) for ``"rbg"`` and ``"unsafe_rbg"``.
    """
    if isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.shape != ():
            raise ValueError(f"{name} must be a single PRNG key, got shape {key.shape}")
        return key
    impl = str(jax.config.jax_default_prng_impl)  # type: ignore[attr-defined]
    if (
        isinstance(key, jax.Array | np.ndarray)
        and key.dtype == np.uint32
        and key.shape == _raw_key_shape(impl)
    ):
        return cast(jax.Array, key)  # a raw jax.random.PRNGKey
    raise TypeError(
        f"{name} must be a JAX PRNG key such as jax.random.key(0), got "
        f"{type(key).__name__} {key!r}"
    )


def check_state(state: Any, caller: str, continues: bool = False) -> None:
    """A TypeError unless ``state`` is a :class:`ReplicaState` (named by ``caller``).

    A call's result gets the hint to pass its ``.state``, and, where the
    caller ``continues`` a run (the drivers), its ``.move_state``.
    """
    if not isinstance(state, ReplicaState):
        hint = ""
        if isinstance(getattr(state, "state", None), ReplicaState):
            hint = ": this is a call's result; pass result.state"
            if hasattr(state, "move_state") and continues:
                hint += " (and move_state=result.move_state to continue its rounds)"
        raise TypeError(
            f"{caller} takes a ReplicaState (from tempering.create_replicas, or a "
            f"result's .state), got {type(state).__name__}{hint}"
        )


def replica(state: ReplicaState, index: int) -> Any:
    """Replica ``index`` as its model library's users hold it.

    Linen: its Flax variables, for ``module.apply``; nnx: an ``nnx.Module`` in
    eval mode; Equinox: a module in inference mode (``(module, state)`` with a
    state); plain functions: the params (:mod:`tempering.frontends`).

    Args:
        state: the stacked replicas.
        index: the replica, in ``[-M, M)`` (negative counts from the end).

    Returns:
        The replica in its library's form (above), a copy.

    Raises:
        TypeError: ``index`` not an integer.
        IndexError: ``index`` outside ``[-M, M)``.

    Example:
        >>> variables = replica(result.state, result.summary.best_replica)
        >>> logits = state.model.module.apply(variables, x, train=False)
    """
    check_state(state, "replica")
    if isinstance(index, bool | np.bool_) or not hasattr(index, "__index__"):
        raise TypeError(f"index must be an int, got {index!r}")
    index = operator.index(index)
    if not -state.num_replicas <= index < state.num_replicas:
        raise IndexError(
            f"index must lie in [-{state.num_replicas}, {state.num_replicas}), got {index}"
        )
    params, stats = jax.tree.map(lambda x: x[index], (state.params, state.batch_stats))
    return state.model.export(params, stats, index % state.num_replicas)
