"""Device meshes, logical-axis rules and shardings for params, batches and caches."""

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import numpy as np
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
    """Builds a ('data', 'fsdp', 'tensor') mesh from config sizes (num_devices: first N only)."""
    devices = list(jax.devices() if devices is None else devices)
    if sizes.get("num_devices"):
        devices = devices[: int(sizes["num_devices"])]
    shape = mesh_shape(sizes, len(devices))
    return Mesh(np.asarray(devices).reshape(shape), MESH_AXES)


def rules_from_config(rules) -> tuple:
    """Turns config rules (a list of [name, axis-or-list-or-None]) into a hashable tuple."""
    if not rules:
        return DEFAULT_RULES
    out = []
    for name, axes in rules:
        out.append((name, tuple(axes) if isinstance(axes, list | tuple) else axes))
    return tuple(out)


def param_shardings(logical_tree, mesh: Mesh, rules=DEFAULT_RULES):
    """Maps a pytree of logical PartitionSpecs to NamedShardings on the mesh."""
    return nn.logical_to_mesh_sharding(logical_tree, mesh, list(rules))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over the data and fsdp axes; the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(("data", "fsdp")))


def replicated(mesh: Mesh) -> NamedSharding:
    """Fully replicated sharding."""
    return NamedSharding(mesh, PartitionSpec())


def batch_divisor(mesh: Mesh) -> int:
    """How many ways the batch dimension is split."""
    return mesh.shape["data"] * mesh.shape["fsdp"]


def put_batch(batch: dict, mesh: Mesh) -> dict:
    """Places a host batch (numpy, this process's rows) onto the mesh, split over the batch axis."""
    sharding = batch_sharding(mesh)
    if jax.process_count() == 1:
        return jax.device_put(batch, sharding)
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch
    )
