"""Short text of arrays, for the reprs a notebook shows."""

from __future__ import annotations

from typing import Any

import numpy as np


def short_array(array: Any, unreadable: str) -> str:
    """``array`` to 4 digits, more than 8 entries elided.

    Args:
        array: a numpy or JAX array.
        unreadable: the text where it cannot be read here (traced, or split
            over processes).
    """
    try:
        values = np.asarray(array)
    except Exception:  # noqa: BLE001 - a tracer, or shards of other processes
        return unreadable
    return np.array2string(values, precision=4, threshold=8, separator=", ")
