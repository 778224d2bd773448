"""Replicas sharded over devices: the replica axis split over a 1-D device mesh.

:func:`shard_replicas` places every per-replica array of a
:class:`~tempering.ReplicaState` (params, BatchNorm statistics, optimiser
state, hyperparameters: all with leading axis M) on a 1-D
:class:`jax.sharding.Mesh` whose one axis is named ``"replicas"``, with
``NamedSharding(mesh, P("replicas"))``: device d holds replicas
``[d * M / D, (d + 1) * M / D)``. Everything else (``step``; the driver's
move state: rungs, C and the ladder, O(M) numbers) is replicated on every
device.

The compiled steps, evaluations and moves of the drivers then run as SPMD
programs over the mesh: XLA propagates the replica sharding from the state
through the vmapped step, so each device trains its own replicas. The
exchange moves only the O(M) hyperparameters, and its output stays
sharded; PBT's exploit copies the weights of a parent replica across devices
and XLA leaves its output replicated, so each segment starts with
:func:`keep_sharded` (in :func:`tempering.loops.run_segment`), which puts the
replicas back on their shards.

In-memory data that is a numpy array reaches the compiled programs on one
device and is copied to the others at every call (every step with
``loop="host"``); :func:`replicate` puts it on every device once.
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Sequence
from typing import Any, cast

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from tempering._caller import warn
from tempering.state import ReplicaState, check_state

__all__ = [
    "REPLICA_AXIS",
    "constrain",
    "constrain_replicated",
    "default_devices",
    "check_same_on_processes",
    "processes_differing",
    "keep_sharded",
    "mesh_of",
    "put_global",
    "replica_mesh",
    "from_process_0",
    "replicate",
    "shard_replicas",
    "to_host",
]

#: Name of the mesh axis the replica axis is split over.
REPLICA_AXIS = "replicas"


def replica_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh over ``devices`` (default all, ``jax.devices()``), axis ``"replicas"``.

    Args:
        devices: the devices to spread the replicas over, in order.

    Returns:
        The :class:`jax.sharding.Mesh`.

    Raises:
        ValueError: for an empty or repeated list of devices.
        TypeError: for something other than a sequence of ``jax.Device``.

    Example:
        >>> mesh = replica_mesh(jax.devices()[:2])
        >>> mesh.shape
        {'replicas': 2}
    """
    if devices is None:
        devices = jax.devices()
    if isinstance(devices, jax.Device) or not isinstance(devices, Sequence):
        raise TypeError(
            "devices must be a sequence of jax devices, e.g. jax.devices() or "
            f"jax.devices()[:2]; got {type(devices).__name__}"
        )
    devices = list(devices)
    if not devices:
        raise ValueError("devices is empty: give at least one device")
    if not all(isinstance(d, jax.Device) for d in devices):
        raise TypeError(
            "devices must hold jax devices (from jax.devices()), got "
            f"{sorted({type(d).__name__ for d in devices})}"
        )
    if len(set(devices)) != len(devices):
        raise ValueError(f"devices lists a device twice: {devices}")
    return Mesh(np.array(devices), (REPLICA_AXIS,))


def _mesh_of(where: Mesh | Sequence[jax.Device] | None) -> Mesh:
    return where if isinstance(where, Mesh) else replica_mesh(where)


def shard_replicas(
    state: ReplicaState, devices: Sequence[jax.Device] | Mesh | None = None
) -> ReplicaState:
    """The state with its replica axis split over ``devices``.

    Every array with the leading replica axis (params, batch_stats, opt_state,
    hyperparams) gets ``NamedSharding(mesh, P("replicas"))``; ``step``
    and any leaf without a leading axis of length M are replicated on every
    device. The values are unchanged; the drivers
    (:func:`tempering.pt_train`, :func:`tempering.pbt_train`,
    :func:`tempering.train`) then train each device's replicas on that device
    and keep the state sharded from round to round.

    Args:
        state: replicas from :func:`tempering.create_replicas` (or a result's
            ``state``, to continue a run).
        devices: the devices, in order (default all: ``jax.devices()``), or a
            1-D :class:`jax.sharding.Mesh` from :func:`replica_mesh`. Their
            number D must divide the number of replicas M; each device then
            holds M / D replicas.

    Returns:
        A new :class:`~tempering.ReplicaState` with the same values, sharded.

    Raises:
        ValueError: M not a multiple of the number of devices (the message
            says how to fix it), or a mesh that is not 1-D.
        TypeError: ``state`` is not a ReplicaState, or bad ``devices``.

    Example:
        >>> state = tp.create_replicas(key, model, tp.sgd(0.05), x[:1], ladder=ladder)
        >>> state = shard_replicas(state)  # M / D replicas on each of D devices
        >>> result = tp.pt_train(state, ladder, key, train_data=(x, y),
        ...                      validation_data=(xv, yv), num_steps=2000,
        ...                      exchange_interval=100)
        >>> result.state.params["Dense_0"]["kernel"].sharding.spec
        PartitionSpec('replicas',)
    """
    check_state(state, "shard_replicas")
    mesh = checked_mesh(devices)
    num, count = state.num_replicas, mesh.size
    if num % count:
        raise ValueError(
            f"num_replicas={num} is not a multiple of the {count} devices: each "
            "device must hold the same number of replicas. Give "
            f"devices=jax.devices()[:k] with k dividing {num}, or create "
            f"{num + count - num % count} replicas (a multiple of {count})"
        )
    _check_mesh_processes(mesh)
    split = NamedSharding(mesh, P(REPLICA_AXIS))
    whole = NamedSharding(mesh, P())

    def place(leaf: Any) -> Any:
        if np.ndim(leaf) >= 1 and np.shape(leaf)[0] == num:
            return put_global(leaf, split)
        return put_global(leaf, whole)

    if mesh.is_multi_process:
        check_same_on_processes(
            (state.params, state.batch_stats, state.opt_state, state.hyperparams),
            "state",
        )
    per_replica = jax.tree.map(
        place,
        (state.params, state.batch_stats, state.opt_state, state.hyperparams),
    )
    params, batch_stats, opt_state, hyperparams = per_replica
    return state.replace(
        params=params,
        batch_stats=batch_stats,
        opt_state=opt_state,
        hyperparams=hyperparams,
        step=put_global(state.step, whole),
    )


def checked_mesh(devices: Sequence[jax.Device] | Mesh | None) -> Mesh:
    """The replicas' mesh ``devices=`` gives (a TypeError or ValueError if none)."""
    mesh = _mesh_of(devices)
    if mesh.axis_names != (REPLICA_AXIS,):
        raise ValueError(
            f"devices: a mesh must be 1-D with axis {REPLICA_AXIS!r} (see "
            f"replica_mesh), got axes {mesh.axis_names}"
        )
    return mesh


def _check_mesh_processes(mesh: Mesh) -> None:
    """A ValueError on every process unless each one's mesh is usable (a collective).

    Over several processes a mesh holds every process's devices (one run over
    them all) or only this process's own (each process runs alone). A mesh of
    some processes' devices would send some processes into collectives the
    others never reach: a hang.
    """
    count = jax.process_count()
    if count == 1:
        return
    from jax.experimental import multihost_utils

    spanned = {d.process_index for d in mesh.devices.flat}
    whole = spanned == set(range(count))
    usable = whole or spanned == {jax.process_index()}
    ids = np.full(jax.device_count(), -1, np.int64)  # a mesh over every process
    if whole:
        ids[: mesh.size] = [d.id for d in mesh.devices.flat]
    row = np.concatenate([[int(usable), int(whole)], ids])
    rows = np.asarray(multihost_utils.process_allgather(row)).reshape(count, -1)
    bad = [int(p) for p in np.nonzero(rows[:, 0] == 0)[0]]
    if bad:
        raise ValueError(
            f"devices: over {count} processes a mesh must hold the devices of "
            "every process (devices=jax.devices(), one run over them all) or only "
            "the process's own (jax.local_devices()); on process "
            f"{bad[0]} it holds devices of processes {sorted(spanned)}, so the "
            "processes would wait for each other forever"
        )
    if rows[:, 1].any() and not (rows[:, 1].all() and (rows[:, 2:] == ids).all()):
        meshes = [
            f"process {p}: "
            + (f"devices {[int(i) for i in r[2:] if i >= 0]}" if r[1] else "its own")
            for p, r in enumerate(rows)
        ]
        raise ValueError(
            f"devices differs between processes ({'; '.join(meshes)}): every "
            "process must give the same devices in the same order (devices="
            "jax.devices() on each) or each its own (jax.local_devices()), or "
            "they would wait for each other forever"
        )


def default_devices(state: ReplicaState) -> list[jax.Device] | None:
    """The devices a run splits its replicas over when ``devices=`` is not given.

    Every local device when there are several and M is a multiple of their
    number; in a run over several processes (``jax.distributed``), every
    process's devices (``jax.devices()``, the global mesh). None (the state
    stays where it is) for one device or a state already sharded. When M is
    not a multiple, a warning says which M would use them all. ``devices=
    jax.local_devices()[:1]`` keeps every replica on one device.
    """
    local = jax.local_devices() if jax.process_count() == 1 else jax.devices()
    if len(local) < 2 or mesh_of(state) is not None:
        return None
    num = state.num_replicas
    if num % len(local):
        fits = [
            len(local) * k for k in (max(1, num // len(local)), num // len(local) + 1)
        ]
        warn(
            f"{num} replicas stay on one device of the {len(local)} here: M must be "
            f"a multiple of {len(local)} to be split over them all (e.g. "
            f"{' or '.join(map(str, sorted(set(fits))))}); devices= chooses them "
            "(devices=jax.local_devices()[:1] keeps one device without this warning)",
            UserWarning,
        )
        return None
    return local


def replicate(
    tree: Any, devices: Sequence[jax.Device] | Mesh | None = None, *, what: str = "data"
) -> Any:
    """Every array of ``tree`` copied to each of ``devices`` (replicated).

    For the data that all sharded replicas read (in-memory training,
    validation and test arrays): the drivers pass such arrays to the compiled
    steps as they are, whereas an array on one device is copied to the others
    at every call of a compiled step (at every step with ``loop="host"``).

    Args:
        tree: a pytree of arrays (numpy or JAX), e.g. ``(inputs, targets)``.
        devices: as for :func:`shard_replicas` (default ``jax.devices()``);
            give the same as there.
        what: what ``tree`` is, for the error when a mesh spans several
            processes and they do not all pass the same values.

    Returns:
        The same pytree of ``jax.Array`` with ``NamedSharding(mesh, P())``.

    Raises:
        ValueError: over several processes (``jax.distributed``), when the
            processes do not all pass the same values.

    Example:
        >>> result = tp.pt_train(shard_replicas(state), ladder, key,
        ...                      train_data=replicate((x, y)),
        ...                      validation_data=replicate((xv, yv)), ...)
    """
    mesh = _mesh_of(devices)
    if mesh.is_multi_process:
        check_same_on_processes(tree, what)
    return put_global(tree, NamedSharding(mesh, P()))


# --- for the drivers: keep a sharded state sharded ---------------------------


def _per_replica_leaves(state: ReplicaState) -> list[Any]:
    return jax.tree.leaves(
        (state.hyperparams, state.params, state.batch_stats, state.opt_state)
    )


def _probe_leaves(state: ReplicaState) -> list[Any]:
    """Hyperparameters and the first weight of each tree (cheap to scan)."""
    firsts = [
        jax.tree.leaves(tree)[:1]
        for tree in (state.params, state.batch_stats, state.opt_state)
    ]
    return [*jax.tree.leaves(state.hyperparams), *sum(firsts, [])]


def mesh_of(state: ReplicaState) -> Mesh | None:
    """The replica mesh ``state`` is sharded over, or None for an unsharded state.

    A state counts as sharded when a hyperparameter or the first
    array of its params, batch_stats or opt_state is split over the
    ``"replicas"`` axis of a mesh (as :func:`shard_replicas` leaves it); a
    state replicated on several devices, or on one device, is not.

    Example:
        >>> mesh_of(shard_replicas(state)).shape
        {'replicas': 4}
    """
    if jax.device_count() == 1:
        return None
    for leaf in _probe_leaves(state):
        sharding = getattr(leaf, "sharding", None)
        if (
            isinstance(sharding, NamedSharding)
            and sharding.mesh.axis_names == (REPLICA_AXIS,)
            and len(sharding.spec) > 0
            and sharding.spec[0] == REPLICA_AXIS
        ):
            return cast(Mesh, sharding.mesh)
    return None


def keep_sharded(state: ReplicaState) -> ReplicaState:
    """``state`` with every per-replica array split over its replica mesh again.

    A move that gathers replicas by an index (PBT's exploit, a restore of a
    diverged replica) may leave its outputs replicated on every device: each
    device would then train all M replicas. This puts them back on their
    shards (each device keeps its slice: no transfer). A no-op, returning
    ``state`` itself, for an unsharded state or one still sharded; call it on
    the host, between compiled calls.

    Example:
        >>> state = keep_sharded(state)  # after a move, before the next segment
    """
    mesh = mesh_of(state)
    if mesh is None:
        return state
    split = NamedSharding(mesh, P(REPLICA_AXIS))
    num = state.num_replicas
    for leaf in _per_replica_leaves(state):
        if np.ndim(leaf) >= 1 and np.shape(leaf)[0] == num:
            if not leaf.sharding.is_equivalent_to(split, leaf.ndim):
                return shard_replicas(state, mesh)
    return state


def constrain_replicated(tree: Any, mesh: Mesh) -> Any:
    """Inside ``jax.jit``: every array of ``tree`` replicated over ``mesh``.

    For a move's state (C, a ladder: O(M) numbers every device reads).
    """
    whole = NamedSharding(mesh, P())
    return jax.tree.map(
        lambda leaf: jax.lax.with_sharding_constraint(leaf, whole), tree
    )


def constrain(state: ReplicaState, mesh: Mesh | None) -> ReplicaState:
    """Inside ``jax.jit``: the state's per-replica arrays pinned to ``mesh``'s shards.

    The traced counterpart of :func:`shard_replicas` (via
    ``jax.lax.with_sharding_constraint``), for a compiled move whose outputs
    should stay sharded: with ``mesh`` static (``mesh_of(state)`` taken on
    the host before the run), XLA then computes a gather of replicas shard by
    shard instead of on every device. ``mesh=None``: ``state`` unchanged.

    Example:
        >>> @functools.partial(jax.jit, static_argnames="mesh")
        ... def apply_move(move, key, state, move_state, scores, round_index, mesh):
        ...     state, move_state, info = move.step(
        ...         key, state, move_state, scores, round_index)
        ...     return constrain(state, mesh), move_state, info
    """
    if mesh is None:
        return state
    split = NamedSharding(mesh, P(REPLICA_AXIS))
    whole = NamedSharding(mesh, P())
    num = state.num_replicas

    def pin(leaf: Any) -> Any:
        leading = np.ndim(leaf) >= 1 and np.shape(leaf)[0] == num
        return jax.lax.with_sharding_constraint(leaf, split if leading else whole)

    params, batch_stats, opt_state, hyperparams = jax.tree.map(
        pin, (state.params, state.batch_stats, state.opt_state, state.hyperparams)
    )
    return state.replace(
        params=params,
        batch_stats=batch_stats,
        opt_state=opt_state,
        hyperparams=hyperparams,
        step=jax.lax.with_sharding_constraint(state.step, whole),
    )


# --- several processes (jax.distributed): a mesh over every process's devices --


def put_global(tree: Any, sharding: NamedSharding) -> Any:
    """``jax.device_put(tree, sharding)``, for a mesh over several processes too.

    With one process (or a sharding of this process's devices only) it is
    :func:`jax.device_put`. Over several processes every process must give the
    same values (:func:`check_same_on_processes` checks it): each process
    places its own shards from its host copy, with no cross-process transfer
    and no equality check of its own (JAX's compares values, and NaN is never
    equal to itself). An array already over the mesh is resharded by
    :func:`jax.device_put`.
    """
    if sharding.is_fully_addressable:
        return jax.device_put(tree, sharding)

    def place(leaf: Any) -> Any:
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            return jax.device_put(leaf, sharding)
        if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(
            leaf.dtype, jax.dtypes.prng_key
        ):
            data = put_global(jax.random.key_data(leaf), sharding)
            return jax.random.wrap_key_data(data, impl=jax.random.key_impl(leaf))
        host = np.asarray(leaf)
        return jax.make_array_from_callback(
            host.shape, sharding, lambda index: host[index]
        )

    return jax.tree.map(place, tree)


def from_process_0(flag: bool) -> bool:
    """``flag`` as process 0 has it, on every process (a collective); one process: itself."""
    return bool(code_from_process_0(int(flag)))


def code_from_process_0(code: int) -> int:
    """``code`` (a small int) as process 0 has it, on every process (a collective)."""
    if jax.process_count() == 1:
        return code
    from jax.experimental import multihost_utils

    return int(multihost_utils.broadcast_one_to_all(np.int32(code)))


@functools.lru_cache(maxsize=32)
def _replicate(shardings: tuple[NamedSharding, ...]) -> Any:
    """One compiled identity program that replicates its arguments (cached)."""
    return jax.jit(lambda *xs: xs, out_shardings=shardings)


def to_host(tree: Any) -> Any:
    """Every array of ``tree`` as numpy (copies), gathered from every process.

    The arrays split over several processes are first gathered, all of them
    in one program (one dispatch, however many arrays: a round's records are
    a dozen small arrays), a collective every process calls in the same
    order; an array on this process's devices or replicated on every device
    is read as it is.
    """
    leaves, treedef = jax.tree.flatten(tree)
    split = [
        i
        for i, leaf in enumerate(leaves)
        if isinstance(leaf, jax.Array)
        and not (leaf.is_fully_addressable or leaf.is_fully_replicated)
    ]
    if split:
        named = [i for i in split if isinstance(leaves[i].sharding, NamedSharding)]
        if named:
            replicated = tuple(leaves[i].sharding.update(spec=P()) for i in named)
            whole = _replicate(replicated)(*(leaves[i] for i in named))
            for i, value in zip(named, whole, strict=True):
                leaves[i] = value
        from jax.experimental import multihost_utils

        for i in split:
            if i not in named:
                leaves[i] = multihost_utils.process_allgather(leaves[i], tiled=True)
    # Copies: a view of a CPU device buffer would keep the buffer alive.
    leaves = jax.device_get(leaves)
    return jax.tree.unflatten(treedef, [np.array(x, copy=True) for x in leaves])


def processes_differing(values: np.ndarray) -> list[int]:
    """The processes whose ``values`` (a small uint32 vector) are not process 0's.

    A collective: every process calls it with a vector of the same length.
    """
    from jax.experimental import multihost_utils

    gathered = np.asarray(multihost_utils.process_allgather(values))
    return [int(p) for p in np.nonzero((gathered != gathered[:1]).any(axis=1))[0]]


def crc32_of(array: Any, start: int = 0) -> int:
    """A CRC-32 of ``array``'s shape, dtype and bytes, continuing ``start``."""
    host = np.ascontiguousarray(np.asarray(array))
    start = zlib.crc32(f"{host.shape}{host.dtype}".encode(), start)
    return zlib.crc32(host.tobytes(), start)


def check_same_on_processes(tree: Any, what: str) -> None:
    """A ValueError unless every process holds the same ``tree`` (a collective).

    For the in-memory data and the state that every process of a
    ``jax.distributed`` run passes to the drivers: each process must build
    them alike (same files, same seeds). Compares a CRC-32 of each array's
    bytes, shape and dtype, so NaN compares equal to NaN. Arrays already over
    several processes are skipped (JAX checked them when they were made).
    """
    if jax.process_count() == 1:
        return
    from jax.experimental import multihost_utils

    paths, sums = [], []
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            continue
        if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(
            leaf.dtype, jax.dtypes.prng_key
        ):
            leaf = jax.random.key_data(leaf)
        sums.append(crc32_of(leaf))
        paths.append(jax.tree_util.keystr(path))
    local = np.array([len(sums), *sums], np.uint32)
    sizes = multihost_utils.process_allgather(local[:1])
    if len(set(sizes.ravel().tolist())) > 1:
        raise ValueError(
            f"the {what} differs between processes: they hold "
            f"{sizes.ravel().tolist()} arrays (process 0, 1, ...); every process "
            f"must pass the same {what} to the driver"
        )
    gathered = multihost_utils.process_allgather(local)
    differ = np.nonzero((gathered != gathered[:1]).any(axis=0))[0]
    if len(differ):
        first = int(differ[0]) - 1
        where = paths[first] if first >= 0 else ""
        procs = np.nonzero(gathered[:, differ[0]] != gathered[0, differ[0]])[0]
        raise ValueError(
            f"the {what} differs between processes: {what}{where} on process "
            f"{int(procs[0])} is not the one on process 0. In a jax.distributed "
            f"run every process must pass the same {what} to the driver (build "
            "it alike: same files, same seeds, same order)"
        )
