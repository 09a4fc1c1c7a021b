"""The optimised Newton forms against the paper-shaped reference step.

``seqtrain.solvers.reference.newton_step`` is one DEER / quasi-DEER iteration as
the papers write it (dense Jacobians, a sequential scan). From the same guess,
one iteration of the solver's per-step forms ("store", "recompute", any chunk
length of their blocked scan) must give the same iterate. The default
chunk-start form is a different iteration (Newton on the chunk starts, exact
steps inside chunks: docs/method.md section 2); it is checked against lax.scan
(tests/test_solver_forward.py). Iterating the reference converges
to lax.scan.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqtrain.solvers import solve
from seqtrain.solvers.reference import newton_step
from cells import make_problem

pytestmark = pytest.mark.x64  # float64: the forms agree to round-off


def _problem(t=40, d=5, seed=0):
  step, params, h0, xs = make_problem("gru", d, t, jnp.float64, seed=seed)
  guess = 0.5 * jax.random.normal(jax.random.PRNGKey(seed + 1), (t, d), jnp.float64)
  return step, params, h0, xs, guess


def _one_iteration(step, params, h0, xs, guess, method, **options):
  hs, info = solve(step, params, h0, xs, method, max_iter=1, on_failure="return",
                   give_up=None, init=guess, **options)
  assert int(info.iterations) == 1
  return hs


@pytest.mark.parametrize("method", ["deer", "quasi_deer"])
@pytest.mark.parametrize("form", [{"mode": "store"}, {"mode": "recompute"},
                                  {"mode": "store", "chunk": 7}])
def test_one_iteration_equals_the_reference_step(method, form):
  step, params, h0, xs, guess = _problem()
  want = newton_step(step, params, h0, xs, guess, diagonal=method == "quasi_deer")
  got = _one_iteration(step, params, h0, xs, guess, method, **form)
  np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
  # the step is not the identity: the guess moved, and not yet to the solution
  exact, _ = solve(step, params, h0, xs, "sequential")
  assert float(jnp.abs(want - guess).max()) > 1e-2
  assert float(jnp.abs(want - exact).max()) > 1e-8


@pytest.mark.parametrize("diagonal", [False, True])
def test_reference_iterations_converge_to_the_scan(diagonal):
  step, params, h0, xs, guess = _problem(t=12, d=3, seed=3)
  exact, _ = solve(step, params, h0, xs, "sequential")
  h = guess
  for _ in range(12):   # Newton on a causal system: exact after at most T steps
    h = newton_step(step, params, h0, xs, h, diagonal=diagonal)
  np.testing.assert_allclose(h, exact, rtol=1e-9, atol=1e-12)
