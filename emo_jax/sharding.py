"""Everything about devices and layouts: the mesh, logical-axis rules, array shardings.

The mesh has two axes: ``data`` (pure data parallelism: parameters replicated) and ``fsdp``
(data parallelism whose parameters, gradients and optimizer state are sharded too). A batch
is split over both; a parameter's *logical* axes (declared by the model) are mapped onto
``fsdp`` by :data:`LOGICAL_AXIS_RULES`. No other module builds meshes or partition specs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

MESH_AXES = ("data", "fsdp")
BATCH_AXES = ("data", "fsdp")  # The batch dimension is split over every device.

# Logical parameter axes -> mesh axes. The large axis of each matrix goes to 'fsdp';
# everything else is replicated. Order matters: the first matching rule wins.
LOGICAL_AXIS_RULES: tuple[tuple[str, Any], ...] = (
  ("vocab", "fsdp"),
  ("mlp", "fsdp"),
  ("qkv", "fsdp"),
  ("positions", None),
  ("embed", None),
  ("norm", None),
)


def initialize_distributed(
  coordinator_address: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
) -> None:
  """Joins a multi-process run; must precede any device use in the process.

  Cross-process collectives of the CPU backend go through Gloo (JAX's CPU default has
  none), which is what lets the multi-process path run -- and be tested -- on one machine;
  accelerator backends are unaffected.
  """
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address, num_processes, process_id)


def make_mesh(data: int = -1, fsdp: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A ``('data', 'fsdp')`` mesh; ``-1`` takes the devices the other axis leaves."""
  devices = list(devices if devices is not None else jax.devices())
  count = len(devices)
  if data == -1 and fsdp == -1:
    raise ValueError("at most one of mesh.data / mesh.fsdp may be -1.")
  if data == -1:
    data = count // fsdp
  if fsdp == -1:
    fsdp = count // data
  if data * fsdp != count:
    raise ValueError(
      f"mesh data={data} x fsdp={fsdp} needs {data * fsdp} devices; {count} are available."
    )
  device_grid = np.asarray(devices).reshape(data, fsdp)
  return Mesh(device_grid, MESH_AXES, axis_types=(AxisType.Auto,) * 2)


def logical_to_sharding(logical_tree, mesh: Mesh, rules=LOGICAL_AXIS_RULES):
  """``NamedSharding`` for every leaf of a tree of logical ``PartitionSpec``s."""
  mesh_specs = nn.logical_to_mesh(logical_tree, rules)
  return jax.tree.map(
    lambda spec: NamedSharding(mesh, spec), mesh_specs, is_leaf=lambda x: isinstance(x, P)
  )


def shardings_for(abstract_tree, mesh: Mesh, rules=LOGICAL_AXIS_RULES):
  """Shardings for an (abstract) tree with ``nn.Partitioned`` boxes; unboxed leaves and
  scalars are replicated. Works for parameters and for optimizer states built from them."""
  logical = nn.get_partition_spec(abstract_tree)
  return logical_to_sharding(logical, mesh, rules)


def create_sharded(init_fn: Callable[..., Any], mesh: Mesh, *args, rules=LOGICAL_AXIS_RULES):
  """Runs ``init_fn(*args)`` so that every output array is *born* sharded.

  ``eval_shape`` gives the boxed output structure, the logical names give the shardings,
  and ``jit(init_fn, out_shardings=...)`` materialises each shard on its own device -- no
  host or single device ever holds the full tree.
  """
  abstract = jax.eval_shape(init_fn, *args)
  out_shardings = shardings_for(abstract, mesh, rules)
  return jax.jit(init_fn, out_shardings=out_shardings)(*args), out_shardings


def batch_sharding(mesh: Mesh, ndim: int = 2, batch_axis: int = 0) -> NamedSharding:
  """``batch_axis`` split over every device, the other axes replicated."""
  spec = [None] * ndim
  spec[batch_axis] = BATCH_AXES
  return NamedSharding(mesh, P(*spec))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def global_batch(
  mesh: Mesh, local_batch: dict[str, np.ndarray], batch_axis: int = 0
) -> dict[str, jax.Array]:
  """Assembles the global batch from each process's rows (multi-host safe)."""

  def put(x):
    return jax.make_array_from_process_local_data(batch_sharding(mesh, x.ndim, batch_axis), x)

  return jax.tree.map(put, local_batch)
