"""Honest numerics: non-finite values as lax.scan gives them, giving up early on
chaotic recurrences, iteration bounds, and why the solver stopped (info.status)."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqtrain.bench import lorenz96_problem
from seqtrain.solvers import STATUS, solve
from cells import make_problem
from grids import FULL

pytestmark = pytest.mark.x64  # float64 exactness against lax.scan (tests/conftest.py)

T, D = 48, 3
# LLVM at -O0 (HLO passes unchanged): compiling is nearly all of these tests' time.
FAST_COMPILE = {"xla_backend_optimization_level": 0}
VARIANTS = [("deer", "shoot"), ("quasi_deer", "shoot"), ("deer", "store"),
            ("quasi_deer", "recompute"), ("elk", None), ("quasi_elk", None)]


def _poison(where, value, step, p, h0, xs):
  if where == "xs":
    xs = xs.at[T // 2, 0].set(value)
  elif where == "params":
    p = dict(p, wz=p["wz"].at[0, 0].set(value))
  else:
    h0 = h0.at[1].set(value)
  return p, h0, xs


def _assert_same_as_scan(a, ref, atol):
  a, ref = np.asarray(a), np.asarray(ref)
  np.testing.assert_array_equal(np.isnan(a), np.isnan(ref))
  np.testing.assert_array_equal(np.isinf(a), np.isinf(ref))
  fin = np.isfinite(ref)
  np.testing.assert_allclose(a[fin], ref[fin], atol=atol, rtol=atol)


def _run(method, mode, p, h0, xs, **kw):
  step = make_problem("gru", D, T, jnp.float64)[0]
  opts = dict(mode=mode, chunk=8) if mode else {}

  def loss(p, h0, xs):
    hs, info = solve(step, p, h0, xs, method, **opts, **kw)
    return jnp.sum(jnp.sin(hs[: T // 3])), (hs, info)

  (_, (hs, info)), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True),
                                   compiler_options=FAST_COMPILE)(p, h0, xs)
  return hs, info, grads


# A NaN input for every variant; the other sites for one variant per family.
CASES = ([(m, mode, "xs", np.nan) for m, mode in VARIANTS]
         + [(m, mode, where, v) for m, mode in (VARIANTS[1], VARIANTS[5])
            for where, v in (("xs", np.inf), ("params", np.nan), ("h0", np.nan), ("h0", -np.inf))])


def _poisoned(where, value):
  _, p, h0, xs = make_problem("gru", D, T, jnp.float64)
  return _poison(where, float(value), None, p, h0, xs)


@functools.lru_cache(maxsize=None)
def _reference(where, value):
  """lax.scan's outputs and gradients (one compile per poisoned problem)."""
  return _run("sequential", None, *_poisoned(where, value))


@pytest.mark.parametrize("method,mode,where,value", CASES)
def test_nonfinite_values_come_out_as_lax_scan_gives_them(method, mode, where, value):
  """NaN / inf in inputs, parameters or h0: the same NaN / inf positions and the
  same finite values as lax.scan, forward and gradient, never flagged converged
  with a different number."""
  ref, _, gref = _reference(where, str(value))
  hs, info, grads = _run(method, mode, *_poisoned(where, value))
  _assert_same_as_scan(hs, ref, 1e-8)
  for g, gr in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(gref)):
    _assert_same_as_scan(g, gr, 1e-6)
  if not np.all(np.isfinite(np.asarray(ref))):
    # The per-step forms and ELK may give up (after 3 iterations) before their converged
    # prefix reaches the NaN; either way they stop early and take the exact path.
    expected = ("nonfinite",) if mode == "shoot" else ("nonfinite", "gave_up")
    assert STATUS[int(info.status)] in expected and not bool(info.converged)
    assert bool(info.fallback)
    assert int(info.iterations) <= 8   # stopped early, not at max_iter


def test_nonfinite_with_on_failure_return_is_flagged():
  _, p, h0, xs = make_problem("gru", D, T, jnp.float64)
  p, h0, xs = _poison("xs", np.nan, None, p, h0, xs)
  hs, info, _ = _run("quasi_deer", "shoot", p, h0, xs, on_failure="return")
  assert not bool(info.converged) and not bool(info.fallback)
  assert STATUS[int(info.status)] == "nonfinite"


def test_chaotic_lorenz96_gives_up_early_and_exactly():
  """Lorenz-96 (D=5, float64): errors grow faster than Newton contracts them, so
  the converged prefix grows by one chunk per iteration; the solver projects
  that, gives up after 3 iterations and returns the exact sequential result."""
  step, params, h0s, xs = lorenz96_problem(T=1000, trials=1)
  h0, xs = h0s[0], xs[0]
  ref, _ = solve(step, params, h0, xs, "sequential")
  for method in ("quasi_deer", "quasi_elk"):
    hs, info = jax.jit(lambda h0: solve(step, params, h0, xs, method))(h0)
    assert STATUS[int(info.status)] == "gave_up", method
    assert int(info.iterations) == 3 and bool(info.fallback), method
    np.testing.assert_array_equal(hs, ref)


def test_default_max_iter_covers_the_causal_bound():
  """200 chunks of 2 steps on Lorenz-96 need about 200 iterations (> the old
  fixed cap of 100); with give_up off the default max_iter lets them finish."""
  step, params, h0s, xs = lorenz96_problem(T=400, trials=1)
  ref, _ = solve(step, params, h0s[0], xs[0], "sequential")
  hs, info = jax.jit(lambda h0: solve(step, params, h0, xs[0], "quasi_deer", chunk=2,
                                      give_up=None, on_failure="return"))(h0s[0])
  assert bool(info.converged) and 100 < int(info.iterations) <= 200
  np.testing.assert_allclose(hs, ref, atol=1e-8)


def test_status_names_every_stop():
  step, p, h0, xs = make_problem("gru", 4, 120, jnp.float64)
  _, info = solve(step, p, h0, xs, "quasi_deer")
  assert STATUS[int(info.status)] == "converged" and bool(info.converged)
  _, info = solve(step, p, h0, xs, "quasi_deer", max_iter=1, chunk=4)
  assert STATUS[int(info.status)] == "max_iter" and bool(info.fallback)
  _, info = solve(step, p, h0, xs, "sequential")
  assert STATUS[int(info.status)] == "converged"
  with pytest.raises(ValueError, match="give_up"):
    solve(step, p, h0, xs, "quasi_deer", give_up=-1)


def _hessian_problem():
  step, p, h0, xs = make_problem("gru", 3, 20, jnp.float64)
  xb = jnp.stack([xs, -0.5 * xs])   # a batch of 2: the solves run under vmap

  def loss(method, **kw):
    def f(p):
      hs = jax.vmap(lambda x: solve(step, p, h0, x, method, chunk=4, **kw)[0])(xb)
      return jnp.sum(jnp.sin(hs)) + jnp.sum(hs[:, -1] ** 2)
    return f
  return p, loss


@functools.lru_cache(maxsize=None)
def _hessian_reference():
  p, loss = _hessian_problem()
  return jax.jit(jax.hessian(loss("sequential")), compiler_options=FAST_COMPILE)(p)


@pytest.mark.parametrize("method", ["deer", "quasi_deer", "elk", "quasi_elk"] if FULL
                         else ["deer", "quasi_elk"])   # one Newton, one damped (tests/grids.py)
def test_hessian_equals_the_scans(method):
  """jax.hessian (forward over reverse, through vmap) of every method equals
  lax.scan's: the tangents are those of the exact solution (implicit.py)."""
  p, loss = _hessian_problem()
  ref = _hessian_reference()
  hess = jax.jit(jax.hessian(loss(method)), compiler_options=FAST_COMPILE)(p)
  for a, b in zip(jax.tree_util.tree_leaves(hess), jax.tree_util.tree_leaves(ref)):
    np.testing.assert_allclose(a, b, atol=1e-8, rtol=1e-7)


def test_reverse_over_reverse_equals_the_scans():
  p, loss = _hessian_problem()
  ref = _hessian_reference()
  hess = jax.jit(jax.jacrev(jax.grad(loss("quasi_deer"))), compiler_options=FAST_COMPILE)(p)
  for a, b in zip(jax.tree_util.tree_leaves(hess), jax.tree_util.tree_leaves(ref)):
    np.testing.assert_allclose(a, b, atol=1e-8, rtol=1e-7)
