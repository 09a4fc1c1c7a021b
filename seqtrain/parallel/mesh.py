"""Device mesh and shardings for data-parallel training.

The mesh spans every device of every process. Axis sizes come from the config;
one size may be -1 ("the rest"). Axes are ``AxisType.Auto`` so Linen's logical
constraints keep working. Batches are split over the ``data`` axis; parameters
are replicated.
"""
from __future__ import annotations

import math
from typing import Sequence

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

__all__ = ["make_mesh", "data_sharding", "replicated", "host_to_global", "data_axis_size"]


def make_mesh(axes: Sequence[str] = ("data",), shape: Sequence[int] = (-1,),
              devices=None) -> jax.sharding.Mesh:
  devices = jax.devices() if devices is None else list(devices)
  n = len(devices)
  shape = [int(s) for s in shape]
  if len(shape) != len(axes):
    raise ValueError(f"mesh.shape {tuple(shape)} needs one size per axis {tuple(axes)}")
  known = math.prod(s for s in shape if s != -1)
  if -1 in shape:
    if n % known:
      raise ValueError(f"mesh.shape {tuple(shape)}: {n} devices are not divisible by {known}")
    shape[shape.index(-1)] = n // known
  if math.prod(shape) != n:
    raise ValueError(f"mesh.shape {tuple(shape)} holds {math.prod(shape)} devices, "
                     f"but {n} are available")
  return jax.make_mesh(tuple(shape), tuple(axes), axis_types=(AxisType.Auto,) * len(axes),
                       devices=devices)


def data_axis_size(mesh: jax.sharding.Mesh) -> int:
  return int(mesh.shape["data"])


def data_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P("data"))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def host_to_global(batch: dict, mesh: jax.sharding.Mesh) -> dict:
  """This process's rows of a global batch -> global jax.Arrays sharded over ``data``."""
  sharding = data_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in batch.items()}
