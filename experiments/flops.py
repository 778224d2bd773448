"""Model FLOPs of a step, and model FLOP utilisation (MFU) against a device peak.

The count is analytic: 2 x the multiply-adds of every matrix product
(``dot_general``) and convolution (``conv_general_dilated``) in the step's
jaxpr, forward and backward, as the model defines them. Elementwise work,
normalisation and the optimiser update are left out (they are a few percent of
a LeNet's or a ResNet's FLOPs), so MFU is the usual lower-bound convention:
useful model FLOPs per second over the device's peak.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

CONV = "conv_general_dilated"
DOT = "dot_general"

# Dense peak TFLOP/s for float32 inputs as XLA runs them by default on the GPU
# (TF32 tensor cores on Ampere and later: jax's default matmul precision), from
# NVIDIA's data sheets (without structured sparsity). Keyed by a substring of
# ``jax.Device.device_kind``; the first match wins, so more specific names first.
PEAK_TFLOPS_F32 = (
    ("H100 PCIe", 378.0),
    ("H100", 494.7),  # SXM
    ("H200", 494.7),
    ("A100", 156.0),
    ("L4", 60.0),
)


def conv_flops(eqn) -> float:
    """2 x multiply-adds of one convolution, padding included.

    The zeros that input dilation inserts (the input gradient of a strided
    convolution) are not counted: only one in ``prod(lhs_dilation)`` window
    positions meets a real input, so the input gradient of a strided layer
    counts as much as its forward pass, as in the usual 3x-forward convention.
    """
    rhs = eqn.invars[1].aval
    out = eqn.outvars[0].aval
    dn = eqn.params["dimension_numbers"]
    window = math.prod(rhs.shape[d] for d in dn.rhs_spec[2:])
    in_features = rhs.shape[dn.rhs_spec[1]]  # per feature group
    dilation = math.prod(eqn.params["lhs_dilation"])
    return 2.0 * math.prod(out.shape) * window * in_features / dilation


def dot_flops(eqn) -> float:
    """2 x multiply-adds of one ``dot_general``: 2 x |output| x |contraction|."""
    lhs = eqn.invars[0].aval
    (lhs_contract, _), _ = eqn.params["dimension_numbers"]
    out = eqn.outvars[0].aval
    return 2.0 * math.prod(out.shape) * math.prod(lhs.shape[d] for d in lhs_contract)


def equations(jaxpr, primitive: str) -> list:
    """All equations of ``primitive`` in ``jaxpr`` and its sub-jaxprs.

    Raises:
        ValueError: if the jaxpr has a loop, whose trip count a static count
            cannot see.
    """
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name in ("scan", "while"):
            raise ValueError(
                f"jaxpr has a {eqn.primitive.name}: count the FLOPs of one "
                "iteration instead"
            )
        if eqn.primitive.name == primitive:
            found.append(eqn)
        for value in eqn.params.values():
            sub = getattr(value, "jaxpr", None)
            if sub is not None:
                found += equations(getattr(sub, "jaxpr", sub), primitive)
    return found


def compiled_alone(eqn, rng: np.random.Generator) -> tuple[Callable, dict]:
    """A zero-argument call of one jaxpr equation, compiled alone, and its shapes.

    The operands are random arrays of the equation's shapes and dtypes, bound
    once, so timing the call times the primitive at the step's shapes.
    """
    operands = [
        jnp.asarray(rng.normal(size=v.aval.shape), v.aval.dtype) for v in eqn.invars
    ]
    fn = jax.jit(lambda *a, p=dict(eqn.params): eqn.primitive.bind(*a, **p))
    shapes = {
        "lhs": list(eqn.invars[0].aval.shape),
        "rhs": list(eqn.invars[1].aval.shape),
        "out": list(eqn.outvars[0].aval.shape),
    }
    return functools.partial(fn, *operands), shapes


def jaxpr_flops(closed_jaxpr) -> float:
    """Model FLOPs of a jaxpr: its matrix products and convolutions."""
    jaxpr = closed_jaxpr.jaxpr
    return sum(dot_flops(e) for e in equations(jaxpr, DOT)) + sum(
        conv_flops(e) for e in equations(jaxpr, CONV)
    )


def peak_tflops(device_kind: str) -> float | None:
    """Dense float32 (TF32) peak of a GPU, or None where it is not tabulated."""
    for name, peak in PEAK_TFLOPS_F32:
        if name in device_kind:
            return peak
    return None
