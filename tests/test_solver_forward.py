"""Every parallel method against jax.lax.scan: states, on random cells.

Every method meets every cell at each kind of shape: one step, two steps, a
mid-size state, and long sequences that cross many chunks of the chunked
solvers. State sizes and lengths are paired rather than crossed (d matters to
the solvers only through matrix sizes, t through the chunking), and each
(cell, method) takes its shapes in turn (tests/grids.py; SEQTRAIN_FULL_TESTS=1
runs every triple); the random shapes of test_float32.py and
test_solver_grad.py cover other combinations.
"""
import functools

import jax
import jax.numpy as jnp
import pytest

from seqtrain.solvers import solve
from cells import make_problem
from grids import product, rotate

pytestmark = pytest.mark.x64  # float64 exactness against lax.scan (tests/conftest.py)

PARALLEL = ["deer", "quasi_deer", "elk", "quasi_elk"]
CELLS = ["gru", "lstm", "tanh"]
TOL = {jnp.float64: 1e-8, jnp.float32: 1e-4}


def _solver(step, method, **opts):
  return jax.jit(lambda p, h0, xs: solve(step, p, h0, xs, method, **opts))


def max_err(a, b):
  return max(float(jnp.max(jnp.abs(x - y))) for x, y in
             zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


@functools.lru_cache(maxsize=None)
def _reference(cell, d, t, dtype):
  """lax.scan's states, computed once per problem and shared by every method."""
  step, params, h0, xs = make_problem(cell, d, t, dtype)
  return _solver(step, "sequential")(params, h0, xs)[0]


def check_states(cell, method, d, t, dtype, **opts):
  step, params, h0, xs = make_problem(cell, d, t, dtype)
  ref = _reference(cell, d, t, dtype)
  # The solver's own iterate (no fallback, no giving up) must be exact.
  hs, info = _solver(step, method, on_failure="return", give_up=None, **opts)(params, h0, xs)
  assert bool(info.converged), (cell, method, d, t, info)
  assert not bool(info.fallback)
  err = max_err(hs, ref)
  assert err <= TOL[dtype], (cell, method, d, t, err, info)
  assert jax.tree_util.tree_structure(hs) == jax.tree_util.tree_structure(ref)
  assert jax.tree_util.tree_leaves(hs)[0].shape == (t, d)
  return info


@pytest.mark.parametrize("cell,method,d,t", rotate(
    product(CELLS, PARALLEL), [(1, 1), (4, 2), (16, 100), (1, 5000), (4, 5000)], per=2))
def test_matches_scan_float64(cell, method, d, t):
  check_states(cell, method, d, t, jnp.float64)


@pytest.mark.parametrize("cell,method,d,t", rotate(
    product(CELLS, PARALLEL), [(1, 1), (16, 100), (16, 2000)]))
def test_matches_scan_float32(cell, method, d, t):
  check_states(cell, method, d, t, jnp.float32)


@pytest.mark.parametrize("cell,method,mode,d,t", rotate(
    product(CELLS, ["deer", "quasi_deer"], ["store", "recompute"]), [(4, 37), (16, 1000)]))
def test_per_step_newton_modes_match_scan(cell, method, mode, d, t):
  """The papers' per-step Newton (store / recompute) next to the default "shoot"."""
  check_states(cell, method, d, t, jnp.float64, mode=mode)


@pytest.mark.parametrize("method,chunk", rotate([("deer",), ("quasi_deer",)],
                                                [(1,), (3,), (7,), (64,)], per=2))
def test_shoot_mode_chunk_sizes(method, chunk):
  """Chunks of one step, chunks not dividing T (padding), one chunk for all T."""
  check_states("gru", method, 5, 50, jnp.float64, chunk=chunk)
