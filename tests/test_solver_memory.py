"""Scratch memory of quasi-DEER from the compiled program (CPU, float32)."""
import jax
import jax.numpy as jnp

from seqtrain.solvers import solve


def _gru_projected_diag(p, h, xp):
  xz, xr, xn = jnp.split(xp, 3, -1)
  z = jax.nn.sigmoid(xz + h @ p["uz"] + p["bz"])
  r = jax.nn.sigmoid(xr + h @ p["ur"])
  hn = h @ p["un"] + p["cn"]
  n = jnp.tanh(xn + r * hn)
  dz = z * (1 - z) * jnp.diagonal(p["uz"])
  dr = r * (1 - r) * jnp.diagonal(p["ur"])
  dn = (1 - n * n) * (dr * hn + r * jnp.diagonal(p["un"]))
  return (1 - z) * n + z * h, -dz * n + (1 - z) * dn + dz * h + z


def _gru_projected(p, h, xp):
  # Input projections computed once outside the solver, as the layers do.
  return _gru_projected_diag(p, h, xp)[0]


def test_quasi_deer_scratch_memory_at_most_4x_output():
  b, t, d = 16, 100_000, 64
  f32 = jnp.float32
  p = dict(uz=jax.ShapeDtypeStruct((d, d), f32), ur=jax.ShapeDtypeStruct((d, d), f32),
           un=jax.ShapeDtypeStruct((d, d), f32), bz=jax.ShapeDtypeStruct((d,), f32),
           cn=jax.ShapeDtypeStruct((d,), f32))
  xs = jax.ShapeDtypeStruct((b, t, 3 * d), f32)
  h0 = jax.ShapeDtypeStruct((b, d), f32)
  fn = jax.jit(jax.vmap(lambda p, h, x: solve(_gru_projected, p, h, x, "quasi_deer",
                                              diag_jacobian=_gru_projected_diag)[0],
                        in_axes=(None, 0, 0)))
  mem = fn.lower(p, h0, xs).compile().memory_analysis()
  out = b * t * d * 4
  ratio = mem.temp_size_in_bytes / out
  print(f"\nquasi_deer GRU B={b} T={t} D={d}: scratch {mem.temp_size_in_bytes / 2**20:.0f} MiB "
        f"= {ratio:.2f}x output")
  assert mem.output_size_in_bytes == out
  assert ratio <= 4.0


def test_after_keeps_values_and_types():
  """schedule.after: the same values (whatever the anchor holds), integer leaves
  untouched; inside shard_map a leaf keeps its varying type unless ``vary``."""
  import numpy as np
  from jax.sharding import PartitionSpec as P
  from seqtrain.solvers import vma
  from seqtrain.solvers.schedule import after
  tree = {"a": jnp.array([[0.0, -0.0, 1.5], [jnp.nan, jnp.inf, -jnp.inf]]), "n": jnp.arange(3),
          "c": jnp.array([1 - 0.0j, -0.0 + 2j], jnp.complex64)}
  bits = lambda t: jax.tree_util.tree_map(lambda a: np.asarray(a).tobytes(), t)
  for first in (1.5, -2.0, -0.0, jnp.inf, -jnp.inf, jnp.nan):
    out = after(tree, jnp.array([first, 2.0]))
    assert bits(out) == bits(tree), first   # bit for bit: signed zeros, NaN, inf
    assert out["n"].dtype == tree["n"].dtype
  for empty in (None, (), jnp.zeros((0, 3))):   # nothing to wait for
    assert after(tree, empty) is tree
  mesh = jax.make_mesh((1,), ("d",), axis_types=(jax.sharding.AxisType.Auto,),
                       devices=jax.devices()[:1])

  def inner(x):
    kept = after(jnp.zeros(3), x)
    made = after(jnp.zeros(3), x, vary=True)
    assert vma.varying_axes(kept) == frozenset() and vma.varying_axes(made) == {"d"}
    return made + x
  out = jax.shard_map(inner, mesh=mesh, in_specs=P("d"), out_specs=P("d"))(jnp.ones(3))
  np.testing.assert_array_equal(out, jnp.ones(3))


def test_training_step_memory_per_layer():
  """Each further layer costs at most 8x its output with ``model.recompute``
  (measured 3.5x: the block's input and states), and the backward rules keep
  one layer's adjoint in memory at a time without it (one layer: 19.3x here,
  30x before they were tied to their cotangents).
  benchmarks/results/cpu-2core-2026-12-07/train_memory.md."""
  from seqtrain.bench.memory import train_step_temp
  one, three = train_step_temp(1, True), train_step_temp(3, True)
  print(f"\nrecompute: depth 1 {one:.1f}x, depth 3 {three:.1f}x one layer's output")
  assert (three - one) / 2 <= 8.0
  assert train_step_temp(1, False) <= 24.0
