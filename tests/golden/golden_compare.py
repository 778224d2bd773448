"""Platform fingerprint and the two ways golden outputs are compared.

Float results of the same program differ in their last bits from one platform to
another: XLA generates code for the processor it runs on (with or without fused
multiply-add, other vector widths and so other summation orders), and another
JAX release compiles another program. So the golden outputs are compared

* **bit for bit** where the platform matches the recording's fingerprint
  (:func:`fingerprint`: library versions, backend, processor and its instruction
  set, the XLA settings that change code generation);
* **within tolerance** everywhere else: every float output within a bound
  derived from the computation (:func:`tolerance`), and the discrete outcomes
  (rungs, proposed and accepted swaps, PBT parents and copies, step counters,
  accuracies: counts of correct predictions) exactly. The configurations are
  chosen so that these outcomes are robust to last-bit differences: every
  recorded one is identical across XLA's instruction sets on the recording
  machine, on the processor that recorded the previous golden outputs and on
  the oldest supported JAX release (``python tests/golden/record_golden.py
  --check`` reruns the configurations under each instruction set and compares).

Neither mode skips: a platform that differs from the recording still runs every
configuration against the recorded values.
"""

from __future__ import annotations

import os
import platform
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

# Unit roundoff of float32 (half the distance from 1 to the next float).
FLOAT32_ROUNDOFF = 2.0**-24

# Rounding allowance per training step, in units of the roundoff. One SGD step
# runs a forward pass, its backward pass and the optimiser update, each through
# reductions of at most 32 terms (the batch) or 16 (the hidden width). Another
# code generation (fused multiply-add or not, other vector widths) rounds those
# sums in another order: a few ulp per stage, with signs that vary from term to
# term (~sqrt(32) ~ 6 ulp at most per sum). A difference made at one step is
# carried by every later step with a gain close to one at these learning rates,
# so the deviation after T steps stays below T times the allowance. Measured
# (tests/golden/README.md): the largest deviation of any float output of any
# configuration, across FMA and no-FMA code generation and across JAX 0.4.30
# and 0.10.2, is 3% of this bound; a change of behaviour (a learning rate off by
# 0.1%, another dropout mask) is tens to thousands of times it.
ULP_PER_STEP = 8

# Outputs that are counts or exact copies even though stored as floats: compared
# exactly in both modes (one changed prediction changes an accuracy by 1/64).
DISCRETE_FLOAT_FIELDS = (
    "accuracy",  # evaluate.accuracy, history.val_accuracy, summary.*_accuracy
    "acceptance_rate",  # accepted / proposed
)

# The ISA features that change XLA:CPU's code generation (x86 and Arm names as
# the Linux kernel spells them in /proc/cpuinfo).
_ISA_FEATURES = (
    "sse4_1 sse4_2 avx avx2 fma f16c avx_vnni avx512f avx512dq avx512bw avx512vl "
    "avx512cd avx512_vnni avx512_bf16 avx512_fp16 avx512vbmi amx_tile amx_bf16 "
    "amx_int8 asimd asimdhp sve sve2 bf16 i8mm"
).split()


def _cpuinfo() -> dict[str, str]:
    """The first processor's entries of /proc/cpuinfo ({} where there is none)."""
    path = Path("/proc/cpuinfo")
    if not path.exists():
        return {}
    info: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if not line.strip():
            if info:
                break
            continue
        name, _, value = line.partition(":")
        info.setdefault(name.strip(), value.strip())
    return info


def _cpu() -> dict[str, Any]:
    """Vendor, family, model and the code-generation ISA features of the CPU."""
    info = _cpuinfo()
    flags = set((info.get("flags") or info.get("Features") or "").split())
    return {
        "vendor": info.get("vendor_id") or info.get("CPU implementer") or "",
        "family": info.get("cpu family") or info.get("CPU architecture") or "",
        "model": info.get("model") or info.get("CPU part") or "",
        "processor": platform.processor() if not info else "",
        "isa": sorted(flags.intersection(_ISA_FEATURES)),
    }


def _xla_flag(name: str) -> str | None:
    """The value of ``--<name>`` in XLA_FLAGS, None where it is not set."""
    match = re.search(rf"--{name}=(\S+)", os.environ.get("XLA_FLAGS", ""))
    return match.group(1) if match else None


def fingerprint() -> dict[str, Any]:
    """What decides the bits of the golden outputs on this platform.

    Returns:
        A JSON-able dict: jax and jaxlib versions, backend and device kind, the
        machine, the CPU (vendor, family, model, ISA features), the XLA
        instruction-set cap (``--xla_cpu_max_isa``) and JAX's
        ``jax_disable_most_optimizations`` (other optimisation passes, other
        fusions). Two platforms with equal fingerprints compile the same
        programs for the same instructions.
    """
    import jax
    import jaxlib

    return {
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "backend": jax.default_backend(),
        "device_kind": jax.devices()[0].device_kind,
        "machine": platform.machine(),
        "cpu": _cpu(),
        "xla_cpu_max_isa": _xla_flag("xla_cpu_max_isa"),
        "jax_disable_most_optimizations": bool(
            jax.config.read("jax_disable_most_optimizations")
        ),
    }


def fingerprint_differences(recorded: Mapping[str, Any]) -> list[str]:
    """The entries of this platform's fingerprint that differ from ``recorded``."""
    here = fingerprint()
    return [
        f"{name}: recorded {recorded.get(name)!r}, here {here[name]!r}"
        for name in here
        if recorded.get(name) != here[name]
    ]


def tolerance(num_steps: int) -> float:
    """Relative bound on a float output after ``num_steps`` training steps."""
    return ULP_PER_STEP * max(num_steps, 1) * FLOAT32_ROUNDOFF


def allowed_deviation(recorded: np.ndarray, num_steps: int, gain: float) -> float:
    """The largest absolute deviation allowed from a recorded float output.

    Relative to the output's magnitude (at least 1): a weight near zero carries
    the rounding of the sums it came from, not of its own size.
    """
    scale = max(1.0, float(np.nanmax(np.abs(recorded), initial=0.0)))
    return tolerance(num_steps) * gain * scale


def is_discrete(key: str, array: np.ndarray) -> bool:
    """Integer, boolean and string outputs, and the float counts above."""
    if array.dtype.kind not in "fc":
        return True
    field = key.rsplit(".", 1)[-1]
    return any(field.endswith(name) for name in DISCRETE_FLOAT_FIELDS)


def compare(
    actual: Mapping[str, Any],
    expected: Mapping[str, np.ndarray],
    *,
    bitwise: bool,
    num_steps: int,
    gains: Mapping[str, float] | None = None,
) -> list[str]:
    """Every difference between one configuration's outputs and the recording.

    Args:
        actual: output name -> array, as a configuration's runner returns them.
        expected: output name -> the recorded array.
        bitwise: compare every output exactly (NaN equals NaN).
        num_steps: training steps of the configuration, for :func:`tolerance`.
        gains: output name -> factor by which that output amplifies a loss
            difference (an acceptance probability ``exp(C dbeta dL)`` changes
            by ``C dbeta`` times the change of ``dL``); 1 when absent.

    Returns:
        One line per output that differs (empty when all agree).
    """
    gains = gains or {}
    failures = []
    missing = sorted(set(expected) - set(actual))
    extra = sorted(set(actual) - set(expected))
    if missing or extra:
        failures.append(f"missing outputs {missing}, unexpected outputs {extra}")
    for key in sorted(set(expected) & set(actual)):
        got, want = np.asarray(actual[key]), expected[key]
        if got.shape != want.shape:
            failures.append(f"{key}: shape {got.shape} != recorded {want.shape}")
            continue
        if bitwise or is_discrete(key, want):
            if not np.array_equal(got, want, equal_nan=want.dtype.kind in "fc"):
                changed = int(np.sum(got != want))
                failures.append(f"{key}: {changed} of {want.size} entries differ")
            continue
        got64, want64 = got.astype(np.float64), want.astype(np.float64)
        if not np.array_equal(np.isnan(got64), np.isnan(want64)):
            failures.append(f"{key}: NaN where the recording has none, or not")
            continue
        allowed = allowed_deviation(want64, num_steps, gains.get(key, 1.0))
        error = float(np.nanmax(np.abs(got64 - want64), initial=0.0))
        if error > allowed:
            failures.append(
                f"{key}: differs by up to {error:.3g}, allowed {allowed:.3g} "
                f"({error / allowed:.1f}x the tolerance)"
            )
    return failures
