"""Frontends compared by what the engine's programs depend on, once built."""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

_Self = TypeVar("_Self", bound="ComparedByContent")


class ComparedByContent:
    """Identity while a frontend builds the replicas; content in their state.

    A frontend's programs that build the replicas hold its weights or its
    builder: it compares by identity. The replicas' copy (:meth:`shared_view`)
    compares by ``_compared``, what the engine's other programs depend on, so
    a new ``create_replicas`` of the same module (another key, a rerun
    notebook cell) compiles nothing again. Subclasses are frozen dataclasses
    (``eq=False``) with a ``shared`` field and a ``_compared`` property.
    """

    shared: bool
    _compared: Any

    def shared_view(self: _Self) -> _Self:
        """This frontend compared by content: what the replicas' programs use."""
        return dataclasses.replace(self, shared=True)  # type: ignore[type-var]

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if not (isinstance(other, type(self)) and self.shared and other.shared):
            return False
        try:
            return bool(self._compared == other._compared)
        except (TypeError, ValueError):  # a static value without plain equality
            return False

    def __hash__(self) -> int:
        if not self.shared:
            return id(self)
        try:
            return hash(self._compared)
        except TypeError:  # an unhashable static value (a list attribute)
            fields = (getattr(self, "name", None), getattr(self, "train_kwarg", None))
            return hash((*fields, type(self).__name__))
