"""Device meshes, logical-axis rules and shardings for params, batches and caches."""

import contextlib
import functools
import math
import threading
from collections.abc import Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# Logical axis name -> mesh axes. Params shard over fsdp (and tensor), batches over data and fsdp.
DEFAULT_RULES = (
    ("batch", ("data", "fsdp")),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("head_dim", None),
    ("layers", None),
)


def mesh_shape(sizes: dict, num_devices: int) -> tuple[int, ...]:
    """Resolves {'data': -1, 'fsdp': 1, 'tensor': 1} against the device count (one -1 allowed)."""
    if sizes.get("num_devices"):
        num_devices = min(num_devices, int(sizes["num_devices"]))
    shape = [int(sizes.get(name, 1)) for name in MESH_AXES]
    unknown = [i for i, s in enumerate(shape) if s == -1]
    if len(unknown) > 1:
        raise ValueError(
            f"config.mesh: at most one axis may be -1, got {dict(zip(MESH_AXES, shape))}"
        )
    if any(s == 0 or s < -1 for s in shape):
        raise ValueError(
            f"config.mesh: sizes must be positive or -1, got {dict(zip(MESH_AXES, shape))}"
        )
    known = math.prod(s for s in shape if s != -1)
    if unknown:
        if num_devices % known:
            raise ValueError(
                f"config.mesh: {num_devices} devices are not divisible by the fixed axes "
                f"{dict(zip(MESH_AXES, shape))}"
            )
        shape[unknown[0]] = num_devices // known
    if math.prod(shape) != num_devices:
        raise ValueError(
            f"config.mesh: {dict(zip(MESH_AXES, shape))} needs {math.prod(shape)} devices, "
            f"{num_devices} are available"
        )
    return tuple(shape)


def make_mesh(sizes: dict, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Builds a ('data', 'fsdp', 'tensor') mesh from config sizes (num_devices: first N only).

    Devices are laid out by the interconnect's topology (`mesh_utils.create_device_mesh`: TPU
    torus, GPU ids), unless that would give a process rows of the batch that are not one
    contiguous block; then in process order, as `put_batch` needs.
    """
    devices = list(jax.devices() if devices is None else devices)
    if sizes.get("num_devices"):
        devices = devices[: int(sizes["num_devices"])]
    shape = mesh_shape(sizes, len(devices))
    try:
        grid = mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
    except (ValueError, NotImplementedError, AssertionError):
        grid = np.asarray(devices).reshape(shape)
    mesh = Mesh(grid, MESH_AXES)
    if _process_batch_blocks(mesh) is None:
        order = sorted(devices, key=lambda d: (d.process_index, d.id))
        mesh = Mesh(np.asarray(order).reshape(shape), MESH_AXES)
    return mesh


@functools.lru_cache(maxsize=64)
def _process_batch_blocks(mesh: Mesh) -> dict[int, tuple[int, int]] | None:
    """{process: (first, end)} of the batch-axis shards each process holds, or None when a
    process's shards are not one contiguous block (in units of batch_divisor(mesh))."""
    n = batch_divisor(mesh)
    rows: dict[int, set[int]] = {}
    for device, index in batch_sharding(mesh).devices_indices_map((n,)).items():
        start = index[0].start or 0
        rows.setdefault(device.process_index, set()).add(start)
    blocks = {}
    for process, starts in rows.items():
        first, end = min(starts), max(starts) + 1
        if len(starts) != end - first:
            return None
        blocks[process] = (first, end)
    return blocks


def rules_from_config(rules) -> tuple:
    """The logical-axis rules: DEFAULT_RULES with the config's entries (a list of [name,
    axis-or-list-or-None]) in place of those names' defaults. A partial list replaced the
    whole table, and every name it left out was replicated (8x the params' memory on full
    FSDP, silently); an unknown name or mesh axis is a ValueError naming it."""
    names = dict(DEFAULT_RULES)
    given = {}
    for entry in rules or ():
        if not isinstance(entry, list | tuple) or len(entry) != 2:
            raise ValueError(f"config.mesh.rules: {entry!r} is not a [name, mesh axes] pair")
        name, axes = entry
        axes = tuple(axes) if isinstance(axes, list | tuple) else axes
        if name not in names:
            raise ValueError(
                f"config.mesh.rules: unknown logical axis {name!r} (known: {sorted(names)})"
            )
        for axis in (axes,) if isinstance(axes, str) or axes is None else axes:
            if axis is not None and axis not in MESH_AXES:
                raise ValueError(
                    f"config.mesh.rules: {name!r} -> unknown mesh axis {axis!r} "
                    f"(mesh axes: {MESH_AXES}, or None)"
                )
        given[name] = axes
    return tuple((name, given.get(name, axes)) for name, axes in DEFAULT_RULES)


def param_shardings(logical_tree, mesh: Mesh, rules=DEFAULT_RULES, shapes=None):
    """Maps a pytree of logical PartitionSpecs to NamedShardings on the mesh.

    With `shapes` (the params, or their `jax.eval_shape`), every split dimension is checked to
    divide evenly over its mesh axes; a ValueError names the param, its size and the axes
    (jax's own error names neither the model size nor the config to change)."""
    out = nn.logical_to_mesh_sharding(logical_tree, mesh, list(rules))
    if shapes is not None:
        check_divisible(out, shapes, mesh)
    return out


class ShardingError(ValueError):
    """A model shape the configured mesh cannot split (the CLI prints it in one line)."""


def check_divisible(shardings, shapes, mesh: Mesh) -> None:
    """Raises ShardingError for the first leaf whose sharded dimension the mesh axes do not
    divide."""
    flat_sh = jax.tree_util.tree_flatten_with_path(shardings)[0]
    flat_shapes = jax.tree.leaves(shapes)
    if len(flat_sh) != len(flat_shapes):
        raise ValueError(f"{len(flat_sh)} shardings for {len(flat_shapes)} params")
    for (path, where), leaf in zip(flat_sh, flat_shapes, strict=True):
        for dim, entry in enumerate(where.spec):
            axes = () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
            ways = math.prod(mesh.shape[a] for a in axes)
            if dim < len(leaf.shape) and leaf.shape[dim] % ways:
                name = "/".join(str(getattr(k, "key", k)) for k in path)
                sizes = ", ".join(f"{a}={mesh.shape[a]}" for a in axes)
                raise ShardingError(
                    f"config.mesh: param {name} {tuple(leaf.shape)} cannot be split over mesh "
                    f"axes {sizes}: its dimension {dim} of size {leaf.shape[dim]} is not a "
                    f"multiple of {ways}. Choose mesh sizes that divide the model's heads, kv "
                    f"heads, vocabulary and widths, or change config.mesh.rules"
                )


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over the data and fsdp axes; the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(("data", "fsdp")))


def replicated(mesh: Mesh) -> NamedSharding:
    """Fully replicated sharding."""
    return NamedSharding(mesh, PartitionSpec())


def batch_divisor(mesh: Mesh) -> int:
    """How many ways the batch dimension is split."""
    return mesh.shape["data"] * mesh.shape["fsdp"]


def check_process_split(mesh: Mesh) -> None:
    """Fails unless every process holds one equal, contiguous block of the batch axis."""
    if jax.process_count() == 1:
        return
    blocks = _process_batch_blocks(mesh)
    sizes = {end - first for first, end in (blocks or {}).values()}
    if blocks is None or len(blocks) != jax.process_count() or len(sizes) != 1:
        raise ValueError(
            f"config.mesh: the batch axes (data x fsdp = {batch_divisor(mesh)}) must split "
            f"evenly over the {jax.process_count()} processes, each holding a contiguous block "
            f"(mesh {dict(mesh.shape)}); raise data or fsdp, lower tensor"
        )


def put_batch(batch, mesh: Mesh):
    """Places a host batch (numpy, this process's rows) onto the mesh, split over the batch axis.

    In a multi-process run every process passes its own rows; together they form the global
    batch in process order (process 0's rows first).
    """
    sharding = batch_sharding(mesh)
    if jax.process_count() == 1:
        return jax.device_put(batch, sharding)
    check_process_split(mesh)

    def put(x):
        x = np.asarray(x)
        global_shape = (x.shape[0] * jax.process_count(), *x.shape[1:])
        return jax.make_array_from_process_local_data(sharding, x, global_shape)

    return jax.tree.map(put, batch)


def local_rows(x: jax.Array) -> np.ndarray:
    """This process's rows of a batch-sharded array as numpy (all rows in a single process)."""
    if x.is_fully_addressable:
        return np.asarray(x)
    pieces: dict[int, jax.Array] = {}
    for shard in x.addressable_shards:
        if any(
            s != slice(None) and s.indices(n) != (0, n, 1)
            for s, n in zip(shard.index[1:], x.shape[1:])
        ):
            raise ValueError(f"local_rows: {x.sharding} splits more than the batch axis")
        pieces.setdefault(shard.index[0].start or 0, shard.data)  # replicas hold the same rows
    return np.concatenate([np.asarray(pieces[start]) for start in sorted(pieces)])


def batch_axes(mesh: Mesh) -> tuple[str, ...]:
    """The mesh axes the batch dimension is split over (`batch_sharding`)."""
    return tuple(batch_sharding(mesh).spec[0])


def _rule_axes(rules, name: str) -> tuple[str, ...]:
    """The mesh axes `rules` map logical axis `name` to (the first rule for a name wins, as in
    flax)."""
    axes = dict(reversed(tuple(rules))).get(name)
    return () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)


def inner_ways(mesh: Mesh, rules, name: str) -> int:
    """How many ways logical axis `name` is split over the mesh axes that do not split the
    batch (those `per_shard_layout` leaves laid out inside a shard_map over the batch axes)."""
    return math.prod(mesh.shape[a] for a in _rule_axes(rules, name) if a not in batch_axes(mesh))


def per_shard_layout(mesh: Mesh, rules=DEFAULT_RULES):
    """The layout (mesh, rules) for code inside `jax.shard_map` over the batch axes: each device
    holds whole rows, so "batch" maps to no axis, and only the other axes (tensor) are laid out,
    by bare PartitionSpecs on shard_map's context mesh (mesh None). None when those axes are
    all of size 1: nothing is left to lay out."""
    if all(size == 1 for name, size in mesh.shape.items() if name not in batch_axes(mesh)):
        return None
    return None, tuple((name, None if name == "batch" else axes) for name, axes in rules)


def logical_sharding(mesh: Mesh | None, rules, names: tuple):
    """Logical axis names laid out on `mesh` by `rules`; with mesh None, the bare PartitionSpec
    (inside `jax.shard_map`, where it applies to the context mesh's automatic axes)."""
    spec = nn.logical_to_mesh_axes(names, list(rules))
    return spec if mesh is None else NamedSharding(mesh, spec)


def cache_sharding(mesh: Mesh | None, rules=DEFAULT_RULES, *, layout: str):
    """Where a KV cache lives: rows split like the batch, kv heads like the attention weights
    (mesh None: a bare PartitionSpec, `logical_sharding`).

    Layouts: the sampler's per-layer cache chunks "decode_k" [B, K, Dh, n] and "decode_v"
    [B, K, n, Dh]; "model" is transformer.KVCache's [L, B, S, K, Dh].
    """
    names = {
        "decode_k": ("batch", "kv_heads", "head_dim", None),
        "decode_v": ("batch", "kv_heads", None, "head_dim"),
        "model": ("layers", "batch", None, "kv_heads", "head_dim"),
    }[layout]
    return logical_sharding(mesh, rules, names)


def bytes_per_device(tree) -> dict[jax.Device, int]:
    """Bytes of `tree`'s arrays held by each addressable device (from the arrays' shards)."""
    out: dict[jax.Device, int] = {}
    for leaf in jax.tree.leaves(tree):
        for shard in leaf.addressable_shards:
            out[shard.device] = out.get(shard.device, 0) + shard.data.nbytes
    return out


# (mesh, rules) while a sharded step is traced; `constrain` reads it.
_ACTIVATIONS = threading.local()


@contextlib.contextmanager
def activation_layout(mesh: Mesh | None, rules=DEFAULT_RULES):
    """While tracing inside it, `constrain` pins activations to `mesh` by `rules` (mesh None:
    inside `jax.shard_map`, on its context mesh; `per_shard_layout`).

    The jitted steps trace their model code inside it (trainer.jit_step), so activations keep
    their rows split over the batch axes and weights are gathered to them (FSDP), instead of
    the partitioner splitting activations like the weights and reducing partial sums.
    """
    previous = getattr(_ACTIVATIONS, "layout", None)
    _ACTIVATIONS.layout = (mesh, tuple(rules))
    try:
        yield
    finally:
        _ACTIVATIONS.layout = previous


def laid_out(fn, mesh: Mesh, rules=DEFAULT_RULES):
    """`fn` traced inside `activation_layout(mesh, rules)` (wrap it before jitting)."""

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        with activation_layout(mesh, rules):
            return fn(*args, **kwargs)

    return wrapped


def layout_ways(name: str) -> int:
    """How many ways the active `activation_layout` splits logical axis `name` (1 outside one,
    and inside a shard_map, whose layout leaves it to the compiler)."""
    layout = getattr(_ACTIVATIONS, "layout", None)
    if layout is None or layout[0] is None:
        return 1
    mesh, rules = layout
    return math.prod(mesh.shape[a] for a in _rule_axes(rules, name))


def replica_ways() -> int:
    """How many whole copies of the params the active `activation_layout`'s mesh holds along
    its "data" axis: the axis's size when the batch is split over it (first) and no other rule
    maps a name to it, else 1 (also outside a layout, and inside a shard_map).

    Each such replica can sum its own micro-batches' gradients and the replicas reduce their
    sums once (`trainer.accumulate`), instead of all-reducing every micro-batch's gradients.
    """
    layout = getattr(_ACTIVATIONS, "layout", None)
    if layout is None or layout[0] is None:
        return 1
    mesh, rules = layout
    if mesh.shape.get("data", 1) == 1 or _rule_axes(rules, "batch")[:1] != ("data",):
        return 1
    if any("data" in _rule_axes(rules, name) for name, _ in rules if name != "batch"):
        return 1
    return mesh.shape["data"]


@contextlib.contextmanager
def per_replica_layout():
    """The active layout for code vmapped over the data replicas (`replica_ways`;
    `jax.vmap(..., spmd_axis_name="data")`, which adds "data" to every constraint inside):
    "batch" keeps only its other axes."""
    mesh, rules = _ACTIVATIONS.layout
    rest = tuple(a for a in _rule_axes(rules, "batch") if a != "data") or None
    with activation_layout(mesh, tuple((n, rest if n == "batch" else a) for n, a in rules)):
        yield


def pin_replicas(x: jax.Array) -> jax.Array:
    """Pins the leading (replica) dimension of `x` to the active layout's "data" axis, leaving
    the other dimensions to the compiler (`replica_ways`)."""
    mesh, _ = _ACTIVATIONS.layout
    spec = PartitionSpec("data", *[PartitionSpec.UNCONSTRAINED] * (x.ndim - 1))
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


def constrain(x: jax.Array, names: tuple) -> jax.Array:
    """Pins activation `x` by logical axis names (None: replicated) inside `activation_layout`.

    A no-op elsewhere (one device, eager code). Names the rules do not list leave that
    dimension to the compiler.
    """
    layout = getattr(_ACTIVATIONS, "layout", None)
    if layout is None:
        return x
    mesh, rules = layout
    table = dict(reversed(rules))  # the first rule for a name wins, as in flax
    dims, used = [], set()
    for n in names:
        axes = None if n is None else table.get(n, PartitionSpec.UNCONSTRAINED)
        if axes is not None and axes is not PartitionSpec.UNCONSTRAINED:
            # A mesh axis splits one dimension: an earlier one keeps it ("mlp" -> (fsdp,
            # tensor) beside "batch" -> (data, fsdp) is split over tensor; jax refused both).
            axes = tuple(a for a in ((axes,) if isinstance(axes, str) else axes) if a not in used)
            used.update(axes)
            axes = axes[0] if len(axes) == 1 else (axes or None)
        dims.append(axes)
    spec = PartitionSpec(*dims)
    # mesh None: inside shard_map (`per_shard_layout`), a bare spec on its context mesh.
    return jax.lax.with_sharding_constraint(x, spec if mesh is None else NamedSharding(mesh, spec))
