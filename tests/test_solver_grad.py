"""Exact gradients through every method (custom VJP, one adjoint recurrence)
against autodiff through jax.lax.scan, w.r.t. params, xs and h0.

Every (cell, method) in one dtype, the dtypes in turn (tests/grids.py;
SEQTRAIN_FULL_TESTS=1 runs both for each); float32 in true float32 (x64 off)
is test_float32.py's."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from seqtrain.solvers import solve
from cells import gru_diag, gru_step, make_problem
from grids import FULL, product, rotate

pytestmark = pytest.mark.x64  # float64 exactness against lax.scan (tests/conftest.py)

PARALLEL = ["deer", "quasi_deer", "elk", "quasi_elk"]
RTOL = {jnp.float64: 1e-6, jnp.float32: 1e-3}


def _loss(step, method, **opts):
  def loss(params, h0, xs):
    hs, _ = solve(step, params, h0, xs, method, **opts)
    leaves = jax.tree_util.tree_leaves(hs)
    w = jnp.linspace(0.5, 1.5, leaves[0].shape[0], dtype=leaves[0].dtype)
    return sum(jnp.sum(jnp.sin(l) * w[:, None]) for l in leaves)
  return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))


def rel_err(a, b):
  a, b = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
  num = np.sqrt(sum(float(jnp.sum((x - y) ** 2)) for x, y in zip(a, b)))
  den = np.sqrt(sum(float(jnp.sum(y ** 2)) for y in b))
  return num / den


@functools.lru_cache(maxsize=None)
def _reference(cell, d, t, dtype):
  """Autodiff through lax.scan, once per problem (shared by every method and option)."""
  step, params, h0, xs = make_problem(cell, d, t, dtype, seed=1)
  return _loss(step, "sequential")(params, h0, xs)


def check_grad(cell, method, d, t, dtype, **opts):
  step, params, h0, xs = make_problem(cell, d, t, dtype, seed=1)
  ref = _reference(cell, d, t, dtype)
  got = _loss(step, method, on_failure="return", **opts)(params, h0, xs)
  for name, g, r in zip(("params", "h0", "xs"), got, ref):
    err = rel_err(g, r)
    assert err <= RTOL[dtype], (cell, method, name, err)


@pytest.mark.parametrize("method,cell,dtype", rotate(
    product(PARALLEL, ["gru", "lstm", "tanh"]), [(jnp.float64,), (jnp.float32,)]))
def test_gradients_match_scan(cell, method, dtype):
  check_grad(cell, method, 8, 300, dtype)


@pytest.mark.parametrize("adjoint,method", rotate(
    [("shoot",), ("dense",), ("quasi",), ("sequential",)], [("deer",), ("quasi_deer",)]))
def test_every_exact_adjoint(adjoint, method):
  check_grad("gru", method, 6, 200, jnp.float64, adjoint=adjoint)


@pytest.mark.parametrize("chunk", [1, 7, 300])
def test_shoot_adjoint_chunk_sizes(chunk):
  """Reverse-time chunks with front padding (200 = 28 x 7 + 4), one-step chunks,
  and a single chunk longer than T."""
  check_grad("lstm", "quasi_deer", 5, 200, jnp.float64, chunk=chunk)


def test_approx_adjoint_is_documented_as_approximate():
  """The reference code's quasi gradient (diag J only) is measurably wrong for a
  dense-weight GRU; the default exact adjoint is not."""
  step, params, h0, xs = make_problem("gru", 16, 500, jnp.float64, seed=2)
  ref = _loss(step, "sequential")(params, h0, xs)
  approx = _loss(step, "quasi_deer", adjoint="approx")(params, h0, xs)
  exact = _loss(step, "quasi_deer")(params, h0, xs)
  assert rel_err(approx[0], ref[0]) > 0.05
  assert rel_err(exact[0], ref[0]) < 1e-6


def test_analytic_diag_hook_gives_same_gradients():
  step, params, h0, xs = make_problem("gru", 8, 400, jnp.float64)
  a = _loss(gru_step, "quasi_deer")(params, h0, xs)
  b = _loss(gru_step, "quasi_deer", diag_jacobian=gru_diag)(params, h0, xs)
  assert rel_err(b, a) < 1e-8


def test_gradient_through_vmap_batch():
  step, params, h0, xs = make_problem("gru", 4, 128, jnp.float64)
  xb = jnp.stack([xs, -xs, 0.5 * xs])
  hb = jnp.stack([h0, -h0, 0 * h0])

  def loss(method):
    def f(p):
      hs, _ = jax.vmap(lambda h, x: solve(step, p, h, x, method))(hb, xb)
      return jnp.sum(hs ** 2)
    return jax.grad(f)(params)

  assert rel_err(loss("quasi_deer"), loss("sequential")) < 1e-8


def test_closed_over_arrays_are_differentiated():
  _, params, h0, xs = make_problem("tanh", 4, 64, jnp.float64)

  def loss(scale, method):
    step = lambda p, h, x: jnp.tanh(scale * (x @ p["w"]) + h @ p["u"] + p["b"])
    return jnp.sum(solve(step, params, h0, xs, method)[0] ** 2)

  g = jax.grad(loss)(1.3, "deer")
  r = jax.grad(loss)(1.3, "sequential")
  assert abs(g - r) <= 1e-8 * abs(r)


@settings(max_examples=8 if FULL else 5, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(d=st.integers(1, 7), t=st.integers(1, 90), batch=st.integers(1, 3),
       method=st.sampled_from(PARALLEL), chunk=st.one_of(st.none(), st.integers(1, 20)),
       mode=st.sampled_from(["shoot", "store", "recompute"]), seed=st.integers(0, 10_000))
def test_random_shapes(d, t, batch, method, chunk, mode, seed):
  """Hypothesis: random D, T, batch, chunk size, Newton mode and method; states and
  gradients (the mode applies to deer / quasi_deer)."""
  step, params, h0, xs = make_problem("gru", d, t, jnp.float64, seed=seed)
  xb = jnp.stack([xs * (1 + 0.1 * i) for i in range(batch)])
  hb = jnp.stack([h0 * (1 - 0.2 * i) for i in range(batch)])

  def run(method, **o):
    def f(p, hb, xb):
      hs, info = jax.vmap(lambda h, x: solve(step, p, h, x, method, **o))(hb, xb)
      return jnp.sum(jnp.cos(hs)), (hs, info)
    # jitted: one compile per example (eagerly, every operation compiles per shape)
    return jax.jit(jax.grad(f, argnums=(0, 1, 2), has_aux=True))(params, hb, xb)

  g_ref, (h_ref, _) = run("sequential")
  g, (h, info) = run(method, chunk=chunk, on_failure="return", give_up=None,
                     mode=mode if method in ("deer", "quasi_deer") else None)
  assert bool(jnp.all(info.converged))
  assert float(jnp.max(jnp.abs(h - h_ref))) < 1e-8
  assert rel_err(g, g_ref) < 1e-6


@pytest.mark.parametrize("opts", [dict(adjoint="quasi", max_iter=1),
                                  dict(adjoint="shoot", max_iter=1, chunk=4)])
def test_unconverged_adjoint_falls_back_to_the_exact_gradient(opts):
  """max_iter=1 leaves the iterative adjoints unconverged: the sequential adjoint is
  written in, under vmap, and the gradients are the exact ones."""
  step, params, h0, xs = make_problem("gru", 5, 120, jnp.float64)
  xb, hb = jnp.stack([xs, 3 * xs]), jnp.stack([h0, -h0])

  def grad(method, **o):
    f = lambda p: jnp.sum(jnp.sin(jax.vmap(lambda h, x: solve(step, p, h, x, method, **o)[0])(
        hb, xb)))
    return jax.jit(jax.grad(f))(params)

  assert rel_err(grad("quasi_deer", **opts), grad("sequential")) < 1e-10


@pytest.mark.parametrize("cell,method,t", [("gru", "quasi_deer", 96), ("lstm", "deer", 100),
                                           ("gru", "quasi_elk", 97)])
def test_input_gradients_in_time_blocks(monkeypatch, cell, method, t):
  """Long sequences take the final VJP block by block (adjoint.input_gradients):
  the same gradients as lax.scan's, for block counts that divide T (96: 12
  blocks of 8, 100: 10 of 10) and for a prime T (97: one block)."""
  from seqtrain.solvers import adjoint
  monkeypatch.setattr(adjoint, "GRADIENT_BLOCK", 8)
  assert [adjoint._time_blocks(n) for n in (96, 100, 97, 15)] == [12, 10, 1, 1]
  check_grad(cell, method, 4, t, jnp.float64)
