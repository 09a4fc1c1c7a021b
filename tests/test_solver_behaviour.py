"""Solver API behaviour: stopping, damping, iteration counts, failure policies."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqtrain.solvers import default_tolerances, solve
from cells import _orth, gru_diag, gru_params, gru_step, make_problem

pytestmark = pytest.mark.x64  # float64 exactness against lax.scan (tests/conftest.py)


def test_unknown_method_lists_valid_ones():
  with pytest.raises(ValueError, match="quasi_deer.*quasi_elk.*ike"):
    solve(gru_step, {}, jnp.zeros(2), jnp.zeros((3, 2)), method="newton")


def test_aliases_are_the_damped_methods():
  step, p, h0, xs = make_problem("gru", 3, 50, jnp.float64)
  run = lambda m: jax.jit(lambda p, h0, xs: solve(step, p, h0, xs, m)[0])(p, h0, xs)
  np.testing.assert_array_equal(run("ike"), run("elk"))
  np.testing.assert_array_equal(run("quasi_ike"), run("quasi_elk"))


@pytest.mark.parametrize("bad", [dict(on_failure="ignore"), dict(init="ones"), dict(adjoint="x"),
                                 dict(elk_step="kalman"), dict(max_iter=-1), dict(mode="fast")])
def test_bad_options_raise(bad):
  step, p, h0, xs = make_problem("gru", 2, 5, jnp.float64)
  with pytest.raises(ValueError):
    solve(step, p, h0, xs, "deer", **bad)


def test_mismatched_time_axes_raise():
  with pytest.raises(ValueError, match="disagree"):
    solve(lambda p, h, x: h, None, jnp.zeros(2), (jnp.zeros((3, 1)), jnp.zeros((4, 1))))


def test_no_inputs_with_length():
  """Autonomous recurrence (xs=None): h_t = 0.5 h_{t-1} + 1."""
  hs, info = solve(lambda p, h, x: p * h + 1.0, jnp.float64(0.5), jnp.zeros(1), None, "deer",
                   length=20)
  ref = np.zeros(20)
  h = 0.0
  for t in range(20):
    h = 0.5 * h + 1
    ref[t] = h
  np.testing.assert_allclose(hs[:, 0], ref, atol=1e-12)


@pytest.mark.parametrize("mode", ["shoot", "store"])
@pytest.mark.parametrize("init", ["zeros", "warm", "given"])
def test_start_guesses(init, mode):
  step, p, h0, xs = make_problem("gru", 4, 200, jnp.float64)
  ref, _ = solve(step, p, h0, xs, "sequential")
  guess = ref + 1e-3 if init == "given" else init
  opts = dict(mode=mode, chunk=5)  # short chunks: the cold start needs several iterations
  hs, info = solve(step, p, h0, xs, "quasi_deer", init=guess, on_failure="return", **opts)
  assert bool(info.converged)
  np.testing.assert_allclose(hs, ref, atol=1e-8)
  if init == "given":
    cold = solve(step, p, h0, xs, "quasi_deer", **opts)[1]
    assert int(info.iterations) < int(cold.iterations), (info.iterations, cold.iterations)


def test_init_trajectory_shape_checked():
  step, p, h0, xs = make_problem("gru", 4, 20, jnp.float64)
  with pytest.raises(ValueError, match="init trajectory"):
    solve(step, p, h0, xs, "deer", init=jnp.zeros((19, 4)))


def test_unconverged_is_flagged_and_falls_back():
  step, p, h0, xs = make_problem("gru", 8, 300, jnp.float64)
  ref, _ = solve(step, p, h0, xs, "sequential")
  opts = dict(max_iter=1, chunk=4)  # 75 chunks of 4 steps: two passes cannot settle them
  hs, info = solve(step, p, h0, xs, "quasi_deer", on_failure="return", **opts)
  assert not bool(info.converged) and not bool(info.fallback)
  assert float(jnp.max(jnp.abs(hs - ref))) > 1e-6
  hs, info = solve(step, p, h0, xs, "quasi_deer", **opts)
  assert not bool(info.converged) and bool(info.fallback)
  np.testing.assert_allclose(hs, ref, atol=1e-12)
  with pytest.raises(Exception, match="did not converge"):
    jax.block_until_ready(jax.jit(lambda: solve(step, p, h0, xs, "quasi_deer",
                                                on_failure="raise", **opts)[0])())


def test_fallback_under_vmap_only_replaces_failed_sequences():
  step, p, h0, xs = make_problem("gru", 4, 200, jnp.float64)
  xb = jnp.stack([xs, 6.0 * xs])
  ref = jax.vmap(lambda x: solve(step, p, h0, x, "sequential")[0])(xb)
  hs, info = jax.jit(jax.vmap(lambda x: solve(step, p, h0, x, "quasi_deer", max_iter=12)))(xb)
  np.testing.assert_allclose(hs, ref, atol=1e-8)
  assert info.fallback.shape == (2,)


def test_nonfinite_iterates_are_reset():
  """A start guess outside the step's domain gives NaN iterates; they are reset
  to the previous iterate, counted, and causality still finishes the solve."""
  t = 20
  xs = jnp.linspace(0.0, 0.1, t)[:, None]
  step = lambda p, h, x: 0.5 * jnp.sqrt(h + 1.0) + x
  h0 = jnp.zeros(1)
  ref, _ = solve(step, None, h0, xs, "sequential")
  for method in ("deer", "quasi_deer"):
    hs, info = solve(step, None, h0, xs, method, init=jnp.full((t, 1), -5.0),
                     max_iter=2 * t, on_failure="return")
    assert bool(jnp.all(jnp.isfinite(hs))), method
    assert int(info.resets) > 0 and bool(info.converged), (method, info)
    np.testing.assert_allclose(hs, ref, atol=1e-12)


@functools.lru_cache(maxsize=None)
def _expansive_tanh(method):
  """Recurrent weight 2.5 x orthogonal, D=4, T=1000: (states, info) of ``method``
  with max_iter=T and no fallback (once per method: DEER's is shared)."""
  d, t = 4, 1000
  w = _orth(jax.random.PRNGKey(0), d, jnp.float64, gain=2.5)
  xs = jax.random.normal(jax.random.PRNGKey(1), (t, d), jnp.float64)
  step = lambda p, h, x: jnp.tanh(h @ p + x)
  h0 = jnp.zeros(d)
  if method == "sequential":
    return solve(step, w, h0, xs, "sequential")
  return jax.jit(lambda w: solve(step, w, h0, xs, method, max_iter=t, on_failure="return",
                                 give_up=None))(w)


@pytest.mark.parametrize("method", ["elk", "quasi_elk"])
def test_damped_methods_on_expansive_tanh(method, record_property):
  """Recurrent weight 2.5 x orthogonal, D=4, T=1000: finite, converged within
  max_iter=T, and the iterations reported next to undamped DEER's."""
  t = 1000
  ref, _ = _expansive_tanh("sequential")
  hs, info = _expansive_tanh(method)
  _, deer = _expansive_tanh("deer")
  print(f"\n{method}: {int(info.iterations)} iterations (lambda {float(info.lam):.2e}); "
        f"deer: {int(deer.iterations)} iterations, {int(deer.resets)} resets")
  record_property("iterations", int(info.iterations))
  record_property("deer_iterations", int(deer.iterations))
  assert bool(jnp.all(jnp.isfinite(hs)))
  assert bool(info.converged) and int(info.iterations) <= t
  np.testing.assert_allclose(hs, ref, atol=1e-6)


def test_fixed_lambda_and_filter_only_options():
  step, p, h0, xs = make_problem("gru", 4, 300, jnp.float64)
  ref, _ = solve(step, p, h0, xs, "sequential")
  for opts in (dict(adaptive_lambda=False, lam_init=1e-4), dict(elk_step="filter")):
    hs, info = solve(step, p, h0, xs, "quasi_elk", on_failure="return", **opts)
    assert bool(info.converged), opts
    np.testing.assert_allclose(hs, ref, atol=1e-8)


def test_untrained_gru_iteration_counts():
  """D=32, T=10,000, float32, flax-like init: the papers' per-step Newton needs
  quasi_deer <= 15, deer <= 7 iterations; the default chunk-start ("shoot") form
  <= 4 for both."""
  d, t = 32, 10_000
  p = gru_params(jax.random.PRNGKey(0), d, d, jnp.float32)
  xs = jax.random.normal(jax.random.PRNGKey(1), (t, d), jnp.float32)
  h0 = jnp.zeros(d, jnp.float32)
  ref, _ = solve(gru_step, p, h0, xs, "sequential")
  limits = {"store": (15, 7), "shoot": (4, 4)}
  for mode, (q_max, n_max) in limits.items():
    q, qi = jax.jit(lambda p: solve(gru_step, p, h0, xs, "quasi_deer", diag_jacobian=gru_diag,
                                    on_failure="return", mode=mode))(p)
    n, ni = jax.jit(lambda p: solve(gru_step, p, h0, xs, "deer", on_failure="return",
                                    mode="recompute" if mode == "store" else mode))(p)
    print(f"\nGRU D=32 T=1e4 float32, {mode}: quasi_deer {int(qi.iterations)} it, "
          f"deer {int(ni.iterations)} it")
    assert bool(qi.converged) and int(qi.iterations) <= q_max, mode
    assert bool(ni.converged) and int(ni.iterations) <= n_max, mode
    assert float(jnp.max(jnp.abs(q - ref))) < 1e-4
    assert float(jnp.max(jnp.abs(n - ref))) < 1e-4


def test_default_tolerances_per_dtype():
  assert default_tolerances(jnp.float64)[0] < default_tolerances(jnp.float32)[0]
  assert default_tolerances(jnp.bfloat16)[0] > default_tolerances(jnp.float32)[0]


@pytest.mark.parametrize("t,chunk", [(50, 8), (50, 10), (7, 64)])
def test_reverse_shoot_matches_reversed_scan(t, chunk):
  """newton_solve(reverse=True) solves z_t = f(z_{t+1}, x_t) backwards from z_T = z0,
  with padding in front when K does not divide T; its sequential fallback too."""
  from seqtrain.solvers.newton import newton_solve
  step, p, h0, xs = make_problem("gru", 4, t, jnp.float64)
  ref = solve(step, p, h0, xs[::-1], "sequential")[0][::-1]
  lin = lambda p, z, x: gru_diag(p, z, x)
  kw = dict(length=t, kind="diag", atol=1e-12, rtol=1e-12, chunk=chunk, mode="shoot",
            reverse=True)
  z, st = newton_solve(lin, p, h0, xs, jnp.zeros((t, 4)), max_iter=100, **kw)
  assert bool(st.converged)
  np.testing.assert_allclose(z, ref, atol=1e-10)
  z, st = newton_solve(lin, p, h0, xs, jnp.zeros((t, 4)), max_iter=0, fallback=step, **kw)
  if t > chunk:
    assert not bool(st.converged)
  np.testing.assert_allclose(z, ref, atol=1e-12)
  with pytest.raises(ValueError, match="reverse"):
    newton_solve(lin, p, h0, xs, jnp.zeros((t, 4)), max_iter=1, **dict(kw, mode="store"))


def test_shoot_makes_early_chunks_exact():
  """After i iterations at least the first i chunks are exact (chunk-level causality)."""
  step, p, h0, xs = make_problem("tanh", 3, 60, jnp.float64)
  ref, _ = solve(step, p, h0, xs, "sequential")
  for i in range(3):
    hs, _ = solve(step, p, h0, xs, "quasi_deer", chunk=10, max_iter=i, on_failure="return")
    np.testing.assert_allclose(hs[:10 * (i + 1) - 1], ref[:10 * (i + 1) - 1], atol=1e-12)


@pytest.mark.parametrize("bz,scale", [(3.0, 1.0), (5.0, 1.0), (3.0, 2.0)])
def test_long_memory_gru_chunk_start_needs_no_more_iterations(bz, scale):
  """Update gates biased towards keeping the state (z ~ 0.95-0.99, as in trained
  long-memory GRUs) and stronger recurrent weights: chunks forget slowly, and the
  chunk-start form still converges, in no more iterations than the per-step form."""
  d, t = 8, 2000
  p = gru_params(jax.random.PRNGKey(0), d, d, jnp.float32)
  p = dict(p, bz=p["bz"] + bz, uz=p["uz"] * scale, ur=p["ur"] * scale, un=p["un"] * scale)
  xs = jax.random.normal(jax.random.PRNGKey(1), (t, d), jnp.float32)
  h0 = jnp.zeros(d, jnp.float32)
  ref, _ = solve(gru_step, p, h0, xs, "sequential")
  its = {}
  for mode in ("shoot", "store"):
    hs, info = jax.jit(lambda p: solve(gru_step, p, h0, xs, "quasi_deer", diag_jacobian=gru_diag,
                                       on_failure="return", mode=mode))(p)
    assert bool(info.converged), (mode, info)
    assert float(jnp.max(jnp.abs(hs - ref))) < 1e-4
    its[mode] = int(info.iterations)
  assert its["shoot"] <= its["store"], its
