"""Device mesh and shardings for data- and sequence-parallel training.

The mesh spans every device of every process. Axis sizes come from the config;
one size may be -1 ("the rest"). Batches are split over the ``data`` axis and,
where the mesh has one, their time axis over ``seq`` (one sequence solved across
devices: seqtrain.solvers.solve(seq_axis="seq")); parameters are replicated.
Each process builds only the rows of its data block and hands over only the time
slices its own devices hold.
"""
from __future__ import annotations

import math
from typing import Sequence

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

__all__ = ["make_mesh", "batch_sharding", "replicated", "host_to_global",
           "data_axis_size", "seq_axis_size", "seq_axis", "process_block", "data_shard"]

SEQ = "seq"


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


def seq_axis(mesh: jax.sharding.Mesh) -> str | None:
  """The name of the sequence axis, or None when the mesh splits batches only."""
  return SEQ if SEQ in mesh.axis_names else None


def seq_axis_size(mesh: jax.sharding.Mesh) -> int:
  return int(mesh.shape[SEQ]) if SEQ in mesh.axis_names else 1


def batch_specs(mesh: jax.sharding.Mesh, keys=("inputs", "lengths", "labels", "mask", "index")):
  """PartitionSpecs of a batch: rows over ``data``; the inputs' time axis over ``seq``."""
  return {k: P("data", seq_axis(mesh)) if k == "inputs" and seq_axis(mesh) else P("data")
          for k in keys}


def batch_sharding(mesh: jax.sharding.Mesh, keys=("inputs", "lengths", "labels", "mask",
                                                  "index")) -> dict:
  return {k: NamedSharding(mesh, spec) for k, spec in batch_specs(mesh, keys).items()}


def process_block(mesh: jax.sharding.Mesh, process: int | None = None) -> dict:
  """The block of the (data, seq) grid whose devices live in ``process``:
  {"data": (first, stop, size), "seq": (first, stop, size)} in device coordinates.
  The mesh must give every process one rectangle of it (true for the meshes
  make_mesh builds when the device count per process divides the axis sizes)."""
  process = jax.process_index() if process is None else process
  devs = np.asarray(mesh.devices)
  mine = np.vectorize(lambda d: d.process_index == process)(devs)
  out = {}
  for axis in ("data", SEQ):
    if axis not in mesh.axis_names:
      out[axis] = (0, 1, 1)
      continue
    i = mesh.axis_names.index(axis)
    hit = np.nonzero(np.any(mine, axis=tuple(j for j in range(devs.ndim) if j != i)))[0]
    out[axis] = (int(hit[0]), int(hit[-1]) + 1, devs.shape[i])
  block = tuple(slice(*out[a][:2]) if a in out else slice(None) for a in mesh.axis_names)
  if not mine[block].all() or mine.sum() != mine[block].size:
    raise ValueError(f"mesh {dict(mesh.shape)}: the devices of process {process} do not form "
                     f"one block of the (data, seq) grid; choose mesh.shape so that each "
                     f"process's {int(mine.sum())} devices fill whole rows or columns")
  return out


def data_shard(mesh: jax.sharding.Mesh):
  """This process's slice of every global batch (processes that share a data block,
  i.e. differ only along ``seq``, read the same rows)."""
  from seqtrain.data.pipeline import ShardInfo
  first, stop, size = process_block(mesh)["data"]
  width = stop - first
  return ShardInfo(first // width, size // width)


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def pad_time(inputs: np.ndarray, multiple: int) -> np.ndarray:
  """Zero steps appended so that the time axis (1) divides into ``multiple``
  equal blocks; the lengths stay as they are, so the model masks the new steps."""
  extra = -inputs.shape[1] % multiple
  if not extra:
    return inputs
  return np.pad(inputs, [(0, 0), (0, extra)] + [(0, 0)] * (inputs.ndim - 2))


def host_to_global(batch: dict, mesh: jax.sharding.Mesh) -> dict:
  """This process's rows of a global batch -> global jax.Arrays, rows sharded over
  ``data`` and, on a mesh with a ``seq`` axis, the inputs' time axis over ``seq``
  (padded to a multiple of its size; each process passes only its time slices)."""
  shardings = batch_sharding(mesh, tuple(batch))
  block = process_block(mesh)
  data_first, data_stop, data_size = block["data"]
  rows = int(np.shape(batch["inputs"])[0]) * data_size // (data_stop - data_first)
  out = {}
  for k, v in batch.items():
    v = np.asarray(v)
    shape = (rows,) + v.shape[1:]
    if k == "inputs" and seq_axis(mesh):
      v = pad_time(v, seq_axis_size(mesh))
      first, stop, size = block["seq"]
      step = v.shape[1] // size
      shape = (rows, v.shape[1]) + v.shape[2:]
      v = v[:, first * step:stop * step]
    out[k] = jax.make_array_from_process_local_data(shardings[k], v, shape)
  return out
