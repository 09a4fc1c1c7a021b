"""float32 exactness with jax_enable_x64 OFF, as training runs it.

With x64 on (the float64 modules, ``pytest.mark.x64`` in tests/conftest.py), a
float32 solve can silently promote to float64 wherever a constant or an
intermediate defaults to the wide type.  This module is not marked (x64 off,
JAX's default; its fixture also asserts so and clears its caches after) and
checks in true float32, against lax.scan
(``solve(..., method="sequential")``): the states of every parallel method and
DEER / quasi-DEER mode (the solver's own iterate, on_failure="return", which
must have converged), gradients w.r.t. params, h0 and xs for every method, the
Flax layer against flax.linen.RNN, and random shapes.

Documented tolerances.  The solver stops when every step's residual meets
|h_t - f(h_{t-1}, x_t)| <= atol + rtol |h_t|, default_tolerances(float32) =
(1e-5, 1e-5).  The returned states differ from lax.scan's by those residuals
carried through the recurrence (amplified by products of step Jacobians; these
cells are contractive, so a few-fold at most) plus float32 rounding on both
sides.  Checks:

  residual   recomputed |h_t - f(h_{t-1}, x_t)| / (atol + rtol |h_t|) <= 1.05
  states     max |h - h_scan|                  <= FWD_ATOL  = 1e-4 (10 atol)
  gradients  ||g - g_scan|| / ||g_scan||       <= GRAD_RTOL = 1e-4 (10 rtol),
             separately for params, h0 and xs

Measured worst errors (XLA:CPU, jax 0.10.2, D = 8, T = 200; max over cells):

  method      mode       states   grads    (residual / tol)
  deer        shoot      5.7e-6   1.2e-6   (0.57: one Newton step, stops just
                                            under the tolerance)
  deer        store      2.4e-7   -
  deer        recompute  3.3e-7   -
  quasi_deer  shoot      2.4e-7   2.6e-7
  quasi_deer  store      8.9e-6   -        (0.98)
  quasi_deer  recompute  9.0e-6   -        (0.98)
  elk         -          4.0e-7   2.8e-7
  quasi_elk   -          8.7e-6   5.6e-7   (0.97)
  each cell solved alone (not jointly, see _problem): worst 1.2e-5 states
  (lstm, quasi_deer store), 2.9e-6 gradients;
  30 random shapes as in test_random_shapes: 2.3e-5 states (gru, quasi_elk,
  chunk 7), 6.7e-6 gradients;
  Flax layer (T = 60, batch 3, D = 6): 4.7e-6 outputs, 2.4e-7 gradients
  (elk / quasi_elk, not run here: 1.9e-5, 8.1e-7);
  adjoint="approx" (diag(J) only): 0.39 - 0.43 relative, 4000x GRAD_RTOL.
So FWD_ATOL has a margin of 4x over the worst state error seen and GRAD_RTOL
of 15x over the worst gradient error, and both sit 1000x below a wrong adjoint.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from hypothesis import HealthCheck, given, settings, strategies as st

from seqtrain.nn import ParallelRNN
from seqtrain.solvers import METHODS, default_tolerances, solve
from cells import gru_diag, make_problem

PARALLEL = tuple(m for m in METHODS if m != "sequential")
NEWTON = ("deer", "quasi_deer")  # the methods with the mode= formulations
CELLS = ("gru", "lstm", "tanh")
D, T = 8, 200
ATOL, RTOL = default_tolerances(np.float32)  # per-step residual: 1e-5, 1e-5
FWD_ATOL = 1e-4
GRAD_RTOL = 1e-4
# LLVM at -O0: halves XLA:CPU compile time, which is nearly all of this module's
# runtime.  The HLO passes are unchanged; only LLVM's code generation is, which
# can move results by float32 roundings (far below the tolerances here).
COMPILE = {"xla_backend_optimization_level": 0}


def _jit(f):
  return jax.jit(f, compiler_options=COMPILE)


@pytest.fixture(autouse=True, scope="module")
def _x64_off():
  prev = jax.config.jax_enable_x64
  jax.config.update("jax_enable_x64", False)
  try:
    yield
  finally:
    for cached in (_problem, _solver_run_cached, _flax_problem):
      cached.cache_clear()
    jax.config.update("jax_enable_x64", prev)


def _leaves(tree):
  return jax.tree_util.tree_leaves(tree)


def max_abs_err(a, b):
  return max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(_leaves(a), _leaves(b)))


def rel_err(a, b):
  """||a - b|| / ||b|| over all leaves of a pytree (accumulated in numpy float64)."""
  a = [np.asarray(x, np.float64) for x in _leaves(a)]
  b = [np.asarray(y, np.float64) for y in _leaves(b)]
  num = np.sqrt(sum(np.sum((x - y) ** 2) for x, y in zip(a, b)))
  return num / np.sqrt(sum(np.sum(y ** 2) for y in b))


def _weighted_loss(hs):
  leaves = _leaves(hs)
  w = jnp.linspace(0.5, 1.5, leaves[0].shape[-2], dtype=leaves[0].dtype)
  return sum(jnp.sum(jnp.sin(l) * w[:, None]) for l in leaves)


def _loss(step, method, **opts):
  def loss(params, h0, xs):
    hs, info = solve(step, params, h0, xs, method, **opts)
    return _weighted_loss(hs), (hs, info)
  return loss


def _options(method, mode=None, **opts):
  if method == "sequential":
    return {}
  if method in NEWTON:
    opts["mode"] = mode
  return dict(on_failure="return", **opts)


# The three cells of tests/cells.py side by side in ONE recurrence: state, params
# and inputs are dicts {cell: ...}, the Jacobian is block diagonal, and each
# cell's states and gradients are exactly its own (its loss terms, params, h0 and
# xs touch no other cell).  One compiled program per method then covers all three
# cells: XLA:CPU compilation is nearly all of this module's runtime, and this
# halves it against three per-cell programs.  The solver iterates until every
# block meets the tolerance, so a cell that alone would stop earlier is checked
# after more iterations (quasi_deer "store": 22 for all, 13 for the GRU alone);
# test_random_shapes solves single cells, where each stops at its own tolerance.
@functools.lru_cache(maxsize=None)
def _problem():
  probs = {c: make_problem(c, D, T, jnp.float32, seed=1) for c in CELLS}
  steps = {c: pr[0] for c, pr in probs.items()}

  def step(p, h, x):
    return {c: steps[c](p[c], h[c], x[c]) for c in CELLS}

  params, h0, xs = ({c: pr[i] for c, pr in probs.items()} for i in (1, 2, 3))
  return steps, step, params, h0, xs


def _solver_run(method, mode=None, grad=True, adjoint=None):
  """(hs, info, grads or None) of one solve of _problem(): one compiled program
  per case, shared by the forward and the gradient tests of every cell."""
  return _solver_run_cached(method, mode, grad, adjoint)  # one cache key per case


@functools.lru_cache(maxsize=None)
def _solver_run_cached(method, mode, grad, adjoint):
  _, step, params, h0, xs = _problem()
  loss = _loss(step, method, **_options(method, mode, adjoint=adjoint))
  if grad:
    (_, (hs, info)), g = _jit(jax.value_and_grad(loss, (0, 1, 2), has_aux=True))(params, h0, xs)
    return hs, info, g
  _, (hs, info) = _jit(loss)(params, h0, xs)
  return hs, info, None


def _residual_ratio(step, params, h0, hs, xs):
  """max over t and components of |h_t - f(h_{t-1}, x_t)| / (atol + rtol |h_t|),
  recomputed here in float32: at most 1 for an iterate the solver calls converged
  (slack: a few float32 roundings of f)."""
  prev = jax.tree_util.tree_map(lambda a0, a: jnp.concatenate([a0[None], a[:-1]]), h0, hs)
  f = jax.vmap(step, in_axes=(None, 0, 0))(params, prev, xs)
  return max(float(jnp.max(jnp.abs(a - b) / (ATOL + RTOL * jnp.abs(b))))
             for a, b in zip(_leaves(f), _leaves(hs)))


FORWARD_CASES = ([(m, "shoot") for m in NEWTON] + [(m, None) for m in PARALLEL if m not in NEWTON]
                 + [(m, mode) for m in NEWTON for mode in ("store", "recompute")])


def _grad_case(method):
  return method, "shoot" if method in NEWTON else None


def test_x64_is_off_and_everything_is_float32():
  """No float64 program leaks in from the x64 modules through the jit caches."""
  assert not jax.config.jax_enable_x64
  assert jnp.zeros(3).dtype == jnp.float32
  assert jnp.asarray(1.0).dtype == jnp.float32
  assert (ATOL, RTOL) == (1e-5, 1e-5)  # the tolerances the module docstring documents
  hs, info, g = _solver_run(*_grad_case("quasi_deer"))
  ref, _, g_ref = _solver_run("sequential")
  for leaf in _leaves((hs, g, ref, g_ref)):
    assert leaf.dtype == jnp.float32, leaf.dtype
  assert info.residual.dtype == jnp.float32
  assert info.iterations.dtype == jnp.int32


@pytest.mark.parametrize("method,mode", FORWARD_CASES)
@pytest.mark.parametrize("cell", CELLS)
def test_forward_matches_scan(cell, method, mode):
  """The parallel solver's own iterate (on_failure="return") converges, meets the
  per-step tolerance and is within FWD_ATOL of lax.scan in float32."""
  steps, _, params, h0, xs = _problem()
  ref, _, _ = _solver_run("sequential")
  hs, info, _ = _solver_run(method, mode, grad=mode in (None, "shoot"))
  assert bool(info.converged), (method, mode, info)
  hs, ref = hs[cell], ref[cell]
  assert all(l.dtype == jnp.float32 for l in _leaves(hs))
  err = max_abs_err(hs, ref)
  assert err <= FWD_ATOL, (cell, method, mode, err)
  ratio = _residual_ratio(steps[cell], params[cell], h0[cell], hs, xs[cell])
  assert ratio <= 1.05, (cell, method, mode, ratio)


@pytest.mark.parametrize("method", PARALLEL)
@pytest.mark.parametrize("cell", CELLS)
def test_gradients_match_scan(cell, method):
  """d loss / d (params, h0, xs) through the custom VJP vs autodiff through
  lax.scan, each within GRAD_RTOL (relative, in norm)."""
  _, _, g_ref = _solver_run("sequential")
  _, info, g = _solver_run(*_grad_case(method))
  assert bool(info.converged)
  for name, a, b in zip(("params", "h0", "xs"), g, g_ref):
    a, b = a[cell], b[cell]
    assert all(l.dtype == jnp.float32 for l in _leaves(a))
    err = rel_err(a, b)
    assert err <= GRAD_RTOL, (cell, method, name, err)


def test_tolerance_catches_the_approximate_adjoint():
  """adjoint="approx" (diag(J) only) is far outside GRAD_RTOL for the dense-weight
  GRU: the gradient test discriminates."""
  _, _, g_ref = _solver_run("sequential")
  _, _, g = _solver_run("quasi_deer", "shoot", adjoint="approx")
  err = rel_err(g[0]["gru"], g_ref[0]["gru"])
  assert err > 100 * GRAD_RTOL, err


# --- the Flax layer ----------------------------------------------------------

FLAX_CELLS = {"gru": nn.GRUCell, "lstm": nn.LSTMCell}
# The layer's own code differs by linearization only: the dense Jacobian (jacfwd
# of the cell's step: deer, elk) or the cells' analytic diagonal (quasi_deer,
# quasi_elk), so one method of each kind.  elk / quasi_elk pass through the same
# layer code to solve() and are checked there above; adding them here costs about
# 40 s of XLA compilation on a 2-core CPU.
FLAX_METHODS = ("deer", "quasi_deer")


def _flax_loss(mod, x):
  def loss(p):
    (c, y), stats = mod.apply(p, x, mutable=["solver_stats"])
    return _weighted_loss(y) + sum(jnp.sum(l) for l in _leaves(c)), (c, y, stats)
  return _jit(jax.value_and_grad(loss, has_aux=True))


@functools.lru_cache(maxsize=None)
def _flax_problem(cell):
  """Cell, inputs, float32 params and nn.RNN's (outputs, carry, grads)."""
  mod = FLAX_CELLS[cell](6, param_dtype=jnp.float32)
  x = jax.random.normal(jax.random.PRNGKey(1), (3, 60, 4), jnp.float32)
  ref = nn.RNN(mod, return_carry=True)
  params = _jit(ref.init)(jax.random.PRNGKey(0), x)
  (_, (c, y, _)), g = _flax_loss(ref, x)(params)
  return mod, x, params, (c, y, g)


@pytest.mark.parametrize("method", FLAX_METHODS)
@pytest.mark.parametrize("cell", list(FLAX_CELLS))
def test_parallel_rnn_matches_nn_rnn(cell, method):
  """ParallelRNN(nn.GRUCell / nn.LSTMCell, float32 params) against flax.linen.RNN
  with the same params: outputs, final carry and param gradients."""
  mod, x, params, (c_ref, y_ref, g_ref) = _flax_problem(cell)
  assert all(l.dtype == jnp.float32 for l in _leaves(params))
  par = ParallelRNN(mod, method=method, return_carry=True, solver_options={"on_failure": "return"})
  (_, (c, y, stats)), g = _flax_loss(par, x)(params)
  assert bool(stats["solver_stats"]["converged"][0])
  assert y.dtype == jnp.float32 and all(l.dtype == jnp.float32 for l in _leaves(g))
  err = max(max_abs_err(y, y_ref), max_abs_err(c, c_ref))
  assert err <= FWD_ATOL, (cell, method, err)
  gerr = rel_err(g, g_ref)
  assert gerr <= GRAD_RTOL, (cell, method, gerr)


# --- random shapes -------------------------------------------------------------

@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cell=st.sampled_from(CELLS), d=st.integers(1, 8), t=st.integers(1, 200),
       batch=st.integers(1, 3), method=st.sampled_from(PARALLEL),
       chunk=st.one_of(st.none(), st.integers(1, 40)),
       mode=st.sampled_from(["shoot", "store", "recompute"]), hook=st.booleans(),
       seed=st.integers(0, 10_000))
def test_random_shapes(cell, d, t, batch, method, chunk, mode, hook, seed):
  """Hypothesis: random cell, D, T, batch (vmap), chunk, mode and method in
  float32; states and gradients.  ``hook``: the GRU's analytic diagonal for the
  quasi methods."""
  step, params, h0, xs = make_problem(cell, d, t, jnp.float32, seed=seed)
  xb = jnp.stack([xs * (1 + 0.1 * i) for i in range(batch)])
  hb = jax.tree_util.tree_map(lambda h: jnp.stack([h * (1 - 0.2 * i) for i in range(batch)]), h0)

  def run(method, **o):
    def f(p, hb, xb):
      hs, info = jax.vmap(lambda h, x: solve(step, p, h, x, method, **o))(hb, xb)
      return _weighted_loss(hs), (hs, info)
    return _jit(jax.value_and_grad(f, (0, 1, 2), has_aux=True))(params, hb, xb)

  (_, (h_ref, _)), g_ref = run("sequential")
  # give_up=None: the early exit (projected iterations > 0.5 x the causal bound)
  # stops e.g. quasi_deer "store" on a GRU with T=8 after 3 iterations, in
  # float64 too; it is a speed heuristic (on_failure="sequential" then returns
  # lax.scan's states), not part of the exactness checked here.
  o = _options(method, mode, chunk=chunk, give_up=None)
  if hook and cell == "gru" and method.startswith("quasi"):
    o["diag_jacobian"] = gru_diag
  (_, (h, info)), g = run(method, **o)
  assert bool(jnp.all(info.converged))
  err = max_abs_err(h, h_ref)
  assert err <= FWD_ATOL, err
  at = lambda tree, i: jax.tree_util.tree_map(lambda a: a[i], tree)
  ratio = max(_residual_ratio(step, params, at(hb, i), at(h, i), xb[i]) for i in range(batch))
  assert ratio <= 1.05, ratio
  for name, a, b in zip(("params", "h0", "xs"), g, g_ref):
    gerr = rel_err(a, b)
    assert gerr <= GRAD_RTOL, (name, gerr)
