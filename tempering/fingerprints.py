"""Fingerprints: what a checkpoint must share with the call that resumes from it.

:func:`fingerprint` describes everything that shapes a run's result as strings
(compared entry by entry on resume, :mod:`tempering.checkpoint`): the key, the
initial replicas and move state (digests of their arrays), the model (its
frontend's configuration and code), the optimiser (its state's structure and
its functions' code and captured settings), the loss, metrics and score
functions (name, code, defaults and closure), the data and the settings. The
same function defined again describes the same; another captured setting
(``nesterov=True``, a momentum, a label smoothing) describes differently.

The run's own code (functions and classes outside installed packages and the
standard library: a script's, a notebook's) is described with what it reads
by global name: the code of the functions and classes it calls (a helper, a
submodule's class) and the values of its constants (numbers, strings,
arrays). Mutable globals (lists, dicts, other objects) and library code are
not described: a resumed call is checked against what defines the run, not
against state that changes as it runs.
"""

from __future__ import annotations

import contextlib
import dis
import functools
import hashlib
import inspect
import re
import sys
import threading
import types
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import fields, is_dataclass
from typing import Any

import jax
import numpy as np

__all__ = [
    "code_of_class",
    "describe_callable",
    "describe_functions_held",
    "describe_optimizer",
    "describe_value",
    "digest",
    "fingerprint",
    "stable_repr",
]


def digest(tree: Any) -> str:
    """A SHA-1 over the bytes, shapes and dtypes of ``tree``'s array leaves."""
    sha = hashlib.sha1()
    for leaf in jax.tree.leaves(tree):
        if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(
            leaf.dtype, jax.dtypes.prng_key
        ):
            leaf = jax.random.key_data(leaf)
        array = np.ascontiguousarray(np.asarray(leaf))
        sha.update(f"{array.shape}{array.dtype}".encode())
        sha.update(array.tobytes())
    return sha.hexdigest()


def stable_repr(value: Any) -> str:
    """``repr(value)``, with the elements of its sets (nested too) in sorted order.

    A set's repr follows its iteration order, which for strings (and other
    hashes that ``PYTHONHASHSEED`` salts) changes from one process to the
    next; sorted, the same set reads alike in every process. Tuples, lists
    and dicts are read into; any other value, and a value holding no set,
    reads as its ``repr``.

    Args:
        value: a value (a code constant, a setting).

    Returns:
        Its repr, the same in every process.
    """
    if isinstance(value, set | frozenset):
        if all(_hashed_alike(item) for item in value):  # as before: its repr
            return repr(value)
        body = "{" + ", ".join(sorted(stable_repr(item) for item in value)) + "}"
        return body if type(value) is set else f"{type(value).__name__}({body})"
    if type(value) is tuple:
        items = [stable_repr(item) for item in value]
        return "(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")"
    if type(value) is list:
        return "[" + ", ".join(stable_repr(item) for item in value) + "]"
    if type(value) is dict:
        pairs = (f"{stable_repr(k)}: {stable_repr(v)}" for k, v in value.items())
        return "{" + ", ".join(pairs) + "}"
    return repr(value)


def _hashed_alike(value: Any) -> bool:
    """Whether ``value``'s hash is the same in every process (no string in it).

    A set of such values iterates in the same order everywhere: its ``repr``
    is already stable (and is what checkpoints before sorting recorded).
    """
    if type(value) is tuple:
        return all(_hashed_alike(item) for item in value)
    return value is None or type(value) in (bool, int, float, complex)


def _code_digest(code: types.CodeType) -> str:
    """Bytecode, constants (nested code included) and names of a function's code.

    A constant reads as its :func:`stable_repr`: a set literal (compiled to a
    frozenset) digests alike in every process.
    """
    sha = hashlib.sha1(code.co_code)
    for const in code.co_consts:
        sha.update(
            _code_digest(const).encode()
            if isinstance(const, types.CodeType)
            else stable_repr(const).encode()
        )
    sha.update(repr(code.co_names).encode())
    return sha.hexdigest()[:16]


@functools.cache
def _library_module(name: str | None) -> bool:
    """Whether module ``name`` is installed code (a package, the standard library)."""
    if not name:
        return True
    root = name.split(".")[0]
    if root == "tempering" or root in sys.stdlib_module_names:
        return True
    module = sys.modules.get(name) or sys.modules.get(root)
    path = str(getattr(module, "__file__", "") or "")
    return "site-packages" in path or "dist-packages" in path


def _is_run_code(value: Any) -> bool:
    """Whether a function, class or object is defined by the run's own code."""
    module = getattr(value, "__module__", None)
    if module is None and not isinstance(value, type | types.FunctionType):
        module = getattr(type(value), "__module__", None)
    return not _library_module(module)


def _global_names(code: types.CodeType) -> list[str]:
    """The names ``code`` (nested functions included) reads as globals."""
    names = {
        ins.argval
        for ins in dis.get_instructions(code)
        if ins.opname in ("LOAD_GLOBAL", "LOAD_NAME")
    }
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names.update(_global_names(const))
    return sorted(names)


# How deep a description follows closures, containers and globals: far past
# what settings nest to (an optax chain of a schedule of schedules: about 15);
# cycles are cut where they close, not by depth.
MAX_DEPTH = 64
# A value met again within one description is written out again when its text
# is this short (as descriptions read before they were shared), else referred to.
SHORT = 200
# Per thread: the stack of objects being described (a cycle closes on one of
# them); what one outermost description has described, by id, each object kept
# alive so that its id is not reused: ``[object, text]``; and the texts of a
# set's elements, each described on its own.
_ACTIVE = threading.local()


@contextlib.contextmanager
def _entered(value: Any) -> Iterator[int | None]:
    """None while ``value`` is new on the stack, else how far up it is (a cycle)."""
    state = _ACTIVE.__dict__
    stack: list[int] = state.setdefault("stack", [])
    if id(value) in stack:
        yield len(stack) - stack.index(id(value))
        return
    if not stack:  # the outermost description
        state["described"], state["alone"] = {}, {}
    stack.append(id(value))
    try:
        yield None
    finally:
        stack.pop()
        if not stack:
            state["described"], state["alone"] = {}, {}


def _once(value: Any, describe: Callable[[], str], cycle: str) -> str:
    """``describe()`` of ``value``, once per outermost description.

    Met again: its text if short, else ``<same:digest>`` (:func:`_short`),
    so a description grows with the objects it reaches, not with the paths
    to them. Met within itself: ``<cycle:^d>`` (``cycle``), d the levels up to
    where it began, which tells apart closures that close on different
    ancestors.
    """
    with _entered(value) as up:
        if up is not None:
            return f"<{cycle}:^{up}>"
        described = _ACTIVE.__dict__["described"]
        seen = described.get(id(value))
        if seen is not None:
            return _short(seen[1])
        entry = described[id(value)] = [value, ""]
        entry[1] = describe()
        return entry[1]


def _short(text: str) -> str:
    """``text`` if short, else ``<same:digest>``: its content, not where it was met."""
    if len(text) <= SHORT:
        return text
    return f"<same:{hashlib.sha1(text.encode()).hexdigest()[:16]}>"


def _on_its_own(value: Any, depth: int) -> str:
    """``value`` described as if nothing had been described before it.

    A set's elements come in an order that changes from process to process;
    described each on its own, none depends on that order. Within
    one outermost description each is described once (unless its text holds
    a cycle, which depends on where it is met).
    """
    state = _ACTIVE.__dict__
    alone = state.get("alone")
    if alone is not None and id(value) in alone:
        return alone[id(value)][1]
    before = state.get("described", {})
    state["described"] = {}
    try:
        text = describe_value(value, depth)
    finally:
        state["described"] = before
    if alone is not None and "<cycle" not in text:
        alone[id(value)] = (value, text)
    return text


def _cut(value: Any) -> str:
    """What stands for a value nested deeper than :data:`MAX_DEPTH`, with a warning."""
    warnings.warn(
        f"the fingerprint of this run describes settings nested {MAX_DEPTH} levels "
        f"deep (a {type(value).__qualname__}); deeper ones are not compared when a "
        "checkpoint is resumed",
        UserWarning,
        stacklevel=2,
    )
    return "..."


def _describe_globals(code: types.CodeType, namespace: dict, depth: int) -> str:
    """What the run's code reads by global name: code and constants (module doc)."""
    if depth > MAX_DEPTH:
        return _cut(code)
    parts = []
    for name in _global_names(code):
        if name not in namespace:  # a builtin
            continue
        value = namespace[name]
        constant = bool | int | float | complex | str | bytes | tuple | np.generic
        if value is None or isinstance(value, constant | np.ndarray | jax.Array):
            parts.append(f"{name}={describe_value(value, depth + 1)}")
        elif isinstance(value, type) and _is_run_code(value):
            describe = functools.partial(code_of_class, value, depth + 1)
            text = _once(value, describe, "cycle")
            parts.append(f"{name}=class:{text}")
        elif isinstance(value, types.FunctionType) and _is_run_code(value):
            parts.append(f"{name}={describe_callable(value, depth + 1)}")
    return "{" + "; ".join(parts) + "}" if parts else ""


def describe_callable(fn: Any, depth: int = 0) -> str:
    """A function's identity: qualified name, code, defaults and closure, as a string.

    Two functions that compute differently (other code, another captured
    setting such as ``nesterov=True`` or a momentum inside an optax
    transformation's closure) get different descriptions; the same function
    defined again gets the same one. A function that reaches itself (a
    recursive closure) reads ``<cycle:^d>`` there, d levels up; one met again
    within a description (a helper many functions call) is written again if
    short, else read ``<same:digest>`` (:func:`_once`).
    """
    if depth > MAX_DEPTH:
        return _cut(fn)
    return _once(fn, lambda: _describe_callable(fn, depth), "cycle")


def _describe_callable(fn: Any, depth: int) -> str:
    if isinstance(fn, functools.partial):
        parts = [describe_callable(fn.func, depth + 1), describe_value(fn.args, depth)]
        parts.append(describe_value(dict(fn.keywords), depth))
        return f"partial({', '.join(parts)})"
    inner = getattr(fn, "__func__", fn)  # a bound method's function
    inner = getattr(inner, "__wrapped__", inner)  # jax.jit, functools.wraps
    code = getattr(inner, "__code__", None)
    name = getattr(inner, "__qualname__", type(inner).__qualname__)
    if code is None:
        if callable(fn) and not isinstance(fn, type):
            if _is_run_code(fn):  # its class's code and all its attributes
                cls = type(fn)
                state = describe_value(dict(vars(fn)), depth + 1)
                return f"{cls.__qualname__}({code_of_class(cls, depth + 1)})({state})"
            state = describe_value(_public_state(fn), depth)
            return f"{type(fn).__qualname__}({state})"
        return name
    parts = [name, _code_digest(code)]
    bound_to = getattr(fn, "__self__", None)  # a bound method: its object's settings
    if bound_to is not None and not isinstance(bound_to, types.ModuleType | type):
        parts.append(describe_value(dict(getattr(bound_to, "__dict__", {})), depth))
    if _is_run_code(inner) and (
        read := _describe_globals(code, inner.__globals__, depth)
    ):
        parts.append(read)
    if inner.__defaults__:
        parts.append(describe_value(inner.__defaults__, depth))
    if inner.__kwdefaults__:
        parts.append(describe_value(inner.__kwdefaults__, depth))
    for cell in inner.__closure__ or ():
        try:
            parts.append(describe_value(cell.cell_contents, depth))
        except ValueError:  # an empty cell
            parts.append("<empty>")
    return "(" + ", ".join(parts) + ")"


def _public_state(obj: Any) -> dict[str, Any]:
    return {
        k: v for k, v in getattr(obj, "__dict__", {}).items() if not k.startswith("_")
    }


def describe_value(value: Any, depth: int) -> str:
    """A setting captured by a function: numbers and strings by value, functions by code.

    A set reads as the sorted descriptions of its elements: the same in every
    process (a set's own order changes with ``PYTHONHASHSEED``), another for
    other elements.
    """
    if value is None or isinstance(value, bool | int | float | complex | str | bytes):
        return repr(value)
    if isinstance(value, np.ndarray | jax.Array | np.generic):
        return f"array:{digest(value)}"
    if depth > MAX_DEPTH:
        return _cut(value)
    if callable(value) and not isinstance(value, _NOT_AS_CALLABLE):
        return describe_callable(value, depth + 1)  # which guards the cycles
    return _once(value, lambda: _describe_value(value, depth), "cycle")


_NOT_AS_CALLABLE = (tuple, list, set, frozenset, dict, types.ModuleType, type)


def _describe_value(value: Any, depth: int) -> str:
    if isinstance(value, tuple | list):
        return "[" + ", ".join(describe_value(v, depth + 1) for v in value) + "]"
    if isinstance(value, set | frozenset):  # in any order: each on its own
        described = sorted(_short(_on_its_own(v, depth + 1)) for v in value)
        return "set{" + ", ".join(described) + "}"
    if isinstance(value, dict):
        items = sorted(value.items(), key=lambda kv: stable_repr(kv[0]))
        return (
            "{"
            + ", ".join(
                f"{stable_repr(k)}: {describe_value(v, depth + 1)}" for k, v in items
            )
            + "}"
        )
    if isinstance(value, types.ModuleType):
        return f"module:{value.__name__}"
    if isinstance(value, type):
        return f"type:{value.__qualname__}"
    if callable(value):
        return describe_callable(value, depth + 1)
    if is_dataclass(value) or isinstance(value, tuple):
        return f"{type(value).__qualname__}:{describe_value(_public_state(value), depth + 1)}"
    if _is_run_code(value) and hasattr(value, "__dict__"):
        return (
            f"{type(value).__qualname__}:{describe_value(dict(vars(value)), depth + 1)}"
        )
    return f"<{type(value).__qualname__}>"


def code_of_class(cls: type, depth: int = 0) -> str:
    """The code of a class's own methods (and its bases' outside flax/equinox/builtins).

    The run's own classes come with what their methods read by global name
    (a submodule's class, a helper, a constant).
    """
    methods = []
    for klass in cls.__mro__:
        if klass.__module__.startswith(
            ("flax.", "equinox.", "builtins", "typing", "abc")
        ):
            continue
        for name, member in sorted(vars(klass).items()):
            if inspect.isfunction(member):
                function = inspect.unwrap(member)  # flax wraps __call__
                text = f"{klass.__qualname__}.{name}:{_code_digest(function.__code__)}"
                if _is_run_code(function):
                    text += _describe_globals(
                        function.__code__, function.__globals__, depth
                    )
                methods.append(text)
    return ";".join(methods)


def describe_functions_held(
    root: Any, attributes: Callable[[Any], Mapping[str, Any] | None]
) -> str:
    """The functions a model's modules hold as attributes (an activation), by code.

    A repr or a tree structure shows a function only by its address: an nnx
    module's ``self.act = nnx.relu`` and ``nnx.relu6`` (or an Equinox static
    field) described alike. ``attributes(node)`` gives a module's attributes
    (None for a value that is not a module); modules, lists, tuples and dicts
    are walked, each object once.
    """
    described: list[str] = []
    seen: set[int] = set()

    def visit(value: Any, where: str) -> None:
        if id(value) in seen or isinstance(value, str | bytes | type):
            return
        seen.add(id(value))
        members = attributes(value)
        if members is not None:
            for name, member in members.items():
                if not name.startswith("_"):
                    visit(member, f"{where}.{name}" if where else name)
        elif isinstance(value, list | tuple):
            for index, item in enumerate(value):
                visit(item, f"{where}[{index}]")
        elif isinstance(value, dict):
            for key in sorted(value, key=stable_repr):
                visit(value[key], f"{where}[{stable_repr(key)}]")
        elif callable(value) and not isinstance(value, np.ndarray | jax.Array):
            described.append(f"{where}={describe_callable(value)}")

    visit(root, "")
    return ";".join(described)


def describe_optimizer(tx: Any, opt_state: Any) -> str:
    """An optax transformation: its state's structure and its functions' code and settings.

    The state mirrors the parameters' tree, whose structure shows an Equinox
    module's static function (an activation) by its address, different in
    every process: left out (the model's own entry describes the function).
    """
    structure = without_addresses(str(jax.tree.structure(opt_state)))
    return f"{structure}|{describe_callable(tx.init)}|{describe_callable(tx.update)}"


_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def without_addresses(text: str) -> str:
    """``text`` (a repr) without the memory addresses, which differ in every process."""
    return _ADDRESS.sub("", text)


def _describe_setting(value: Any) -> str:
    """A move's static setting: its repr, unless that names a memory address.

    An address differs in every process (a function, an object without a
    repr of its own), so such a setting is described by its code and state;
    a set's elements are sorted (:func:`stable_repr`).
    """
    text = stable_repr(value)
    if not _ADDRESS.search(text):
        return text
    if callable(value):
        return describe_callable(value)
    cls = type(value)
    state = describe_value(_public_state(value), 1)
    return f"{cls.__qualname__}({code_of_class(cls)})({state})"


def _nested_moves(value: Any) -> list[Any]:
    """The moves (dataclasses) a move holds as a pytree field, alone or in a sequence."""
    items = value if isinstance(value, tuple | list) else (value,)
    return [item for item in items if is_dataclass(item) and not isinstance(item, type)]


def describe_move(move: Any) -> str:
    """The move's type, settings and arrays, and those of the moves it holds."""
    if is_dataclass(move):
        static, nested = {}, {}
        for f in fields(move):
            value = getattr(move, f.name)
            if not f.metadata.get("pytree_node", True):
                static[f.name] = _describe_setting(value)
            elif moves := _nested_moves(value):
                nested[f.name] = [describe_move(m) for m in moves]
        text = f"{type(move).__qualname__}{sorted(static.items())}"
        if nested:
            text += f"{sorted(nested.items())}"
        return f"{text}:{digest(move)}"
    target = getattr(move, "fn", move)
    return f"{type(move).__qualname__}:{getattr(target, '__qualname__', repr(target))}"


def _describe_data(data: Any) -> str:
    """In-memory data and re-iterable batches by their values; a training stream by kind.

    Evaluation batches are read at every round anyway: one more pass here. A
    training stream resumes from wherever the caller's iterator stands, so
    what it yields first is no mark of the run; a stream that saves its
    position is checked by the batch it yields there instead
    (:func:`tempering.resume.with_next_batch`), and a re-iterable replayed
    from a fresh pass by the elements of that pass read before it too
    (:attr:`tempering.batches.BatchReader.pass_crc`).
    """
    inputs = getattr(data, "inputs", None)
    if inputs is not None:
        return digest((inputs, data.targets))
    if getattr(data, "restartable", False):
        return f"{type(data).__qualname__}:{digest(list(data.make_iterator()))}"
    return type(data).__qualname__


def fingerprint(
    state: Any, move_state: Any, key: jax.Array, move: Any, data: Any, **settings: Any
) -> dict[str, str]:
    """What a checkpoint must share with the call that resumes from it.

    Entries: the key, the initial replicas and move state, the model, the
    optimiser, the loss, the move, the data; and every ``settings`` entry
    (callables described by :func:`describe_callable`, the rest by
    :func:`stable_repr`).
    """
    return {
        "key": digest(key),
        "initial_state": digest(
            (state.params, state.batch_stats, state.opt_state, state.hyperparams)
        ),
        "initial_move_state": digest(move_state),
        "first_step": repr(int(state.step)),
        "model": state.model.describe(),
        "optimizer": describe_optimizer(state.tx, state.opt_state),
        "loss_fn": describe_callable(state.loss_fn),
        "model_inputs": repr((state.model_inputs, state.scheduled)),
        "move": describe_move(move),
        "train_data": _describe_data(data.train),
        "validation_data": _describe_data(data.validation),
        "test_data": _describe_data(data.test),
        **{
            name: describe_callable(value) if callable(value) else stable_repr(value)
            for name, value in settings.items()
        },
    }
