"""Complex states in the solvers, and the LRU cell built on them.

Every method against lax.scan on complex recurrences (a linear one, where
Newton is exact in one step, and a nonlinear holomorphic one), outputs and
gradients of a real loss, in complex128 and complex64; ParallelRNN(LRUCell)
against nn.RNN(LRUCell); the ring initialisation; the max / mean_max poolings.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from seqtrain.models.classifier import SequenceClassifier, masked_max
from seqtrain.nn import LRUCell, ParallelRNN
from seqtrain.solvers import solve

pytestmark = pytest.mark.x64  # float64 exactness against lax.scan (tests/conftest.py)

METHODS = ("quasi_deer", "deer", "elk", "quasi_elk")
# LLVM at -O0 (HLO passes unchanged): compiling is nearly all of these tests' time.
FAST_COMPILE = {"xla_backend_optimization_level": 0}


def _value_and_grad(f, params):
  return jax.jit(jax.value_and_grad(f, has_aux=True), compiler_options=FAST_COMPILE)(params)


def _problem(dtype, t=60, d=3, seed=0):
  real = jnp.float64 if dtype == jnp.complex128 else jnp.float32
  k = jax.random.split(jax.random.key(seed), 5)
  params = {"nu_log": jnp.log(-jnp.log(jax.random.uniform(k[0], (d,), real, 0.5, 0.8))),
            "theta": jax.random.uniform(k[1], (d,), real, 0.0, 3.0),
            "c": 0.05 * jax.random.normal(k[2], (d,), real)}
  xs = 0.2 * jax.lax.complex(jax.random.normal(k[3], (t, d), real),
                             jax.random.normal(k[4], (t, d), real))
  return params, xs.astype(dtype), jnp.zeros((d,), dtype)


def _lam(p):
  return jnp.exp(-jnp.exp(p["nu_log"]) + 1j * p["theta"])


def linear_step(p, h, x):
  return _lam(p) * h + x


def nonlinear_step(p, h, x):
  # Holomorphic in h, elementwise: the Jacobian is the complex diagonal
  # lam + c cos(h), so quasi-DEER is exact Newton here too.
  return _lam(p) * h + p["c"] * jnp.sin(h) + x


def _loss(step, method, params, xs, h0, **kw):
  hs, info = solve(step, params, h0, xs, method, **kw)
  w = jnp.arange(1, xs.shape[0] + 1, dtype=jnp.abs(h0).dtype)[:, None]
  return jnp.sum(w * jnp.abs(hs) ** 2) / xs.shape[0], (hs, info)


@pytest.mark.parametrize("step,dtype,tol", [
    (linear_step, jnp.complex128, 1e-9), (nonlinear_step, jnp.complex128, 1e-9),
    (nonlinear_step, jnp.complex64, 2e-4)], ids=["linear-c128", "nonlinear-c128", "nonlinear-c64"])
def test_complex_states_match_scan(step, dtype, tol):
  params, xs, h0 = _problem(dtype)
  (ref, (hs_ref, _)), g_ref = _value_and_grad(
      lambda p: _loss(step, "sequential", p, xs, h0), params)
  assert hs_ref.dtype == dtype and bool(jnp.all(jnp.isfinite(hs_ref)))
  for method in METHODS:
    (val, (hs, info)), g = _value_and_grad(
        lambda p: _loss(step, method, p, xs, h0, give_up=None, on_failure="return"), params)
    assert hs.dtype == dtype, method
    assert bool(info.converged), method
    scale = float(jnp.max(jnp.abs(hs_ref)))
    assert float(jnp.max(jnp.abs(hs - hs_ref))) <= tol * scale, method
    for name in g:
      err = float(jnp.max(jnp.abs(g[name] - g_ref[name])))
      assert err <= tol * max(1.0, float(jnp.max(jnp.abs(g_ref[name])))), (method, name, err)
    if step is linear_step and method in ("quasi_deer", "deer"):
      assert int(info.iterations) == 1, (method, int(info.iterations))


def test_complex_residual_tolerance_is_the_real_dtypes():
  """A complex128 state is judged at float64 tolerances: an unconverged
  iterate is not reported as converged (it once was, at 1e-2)."""
  params, xs, h0 = _problem(jnp.complex128, t=200)
  _, info = solve(linear_step, params, h0, xs, "elk", max_iter=2, give_up=None,
                  on_failure="return")
  assert not bool(info.converged) and float(info.residual) > 1e-8


def test_lru_cell_parallel_matches_nn_rnn():
  x = jax.random.normal(jax.random.key(3), (2, 50, 4))
  cell = LRUCell(6)
  v = nn.RNN(cell).init(jax.random.key(1), x)
  ref = nn.RNN(cell).apply(v, x)
  assert ref.shape == (2, 50, 12) and ref.dtype == jnp.float32
  for method in ("sequential",) + METHODS:
    out = ParallelRNN(cell, method=method).apply(v, x)
    np.testing.assert_allclose(out, ref, atol=2e-5, rtol=2e-5, err_msg=method)


def test_lru_ring_init():
  cell = LRUCell(256, min_timescale=10.0, max_timescale=1000.0)
  x = jnp.ones((1, 3))
  p = cell.init(jax.random.key(0), cell.initialize_carry(jax.random.key(0), x.shape), x)["params"]
  mag = np.exp(-np.exp(np.asarray(p["nu_log"])))
  tau = 1 / (1 - mag)
  assert tau.min() >= 10 * 0.99 and tau.max() <= 1000 * 1.01
  # log-uniform: about half the units remember longer than sqrt(10 * 1000) = 100 steps
  assert 0.35 < np.mean(tau > 100) < 0.65
  theta = np.exp(np.asarray(p["theta_log"]))
  assert 0 < theta.min() and theta.max() <= np.pi
  # gamma normalises: white input of unit power gives states of about unit power
  np.testing.assert_allclose(np.exp(2 * np.asarray(p["gamma_log"])), 1 - mag ** 2, rtol=1e-4)


def test_masked_max_ignores_padding():
  x = jnp.array([[[1.0], [5.0], [9.0]], [[-3.0], [-2.0], [7.0]]])
  mask = jnp.array([[True, True, False], [True, False, False]])
  np.testing.assert_array_equal(masked_max(x, mask), [[5.0], [-3.0]])
  np.testing.assert_array_equal(masked_max(x, jnp.zeros_like(mask)), [[0.0], [0.0]])


@pytest.mark.parametrize("pooling", ["max", "mean_max"])
def test_classifier_lru_poolings_and_padding(pooling):
  """Logits of a padded example equal those of the unpadded one (the padding
  is neither pooled nor seen by the causal recurrence before the last step)."""
  model = SequenceClassifier(3, width=8, depth=2, cell="lru", pooling=pooling,
                             method="sequential")
  x = jax.random.normal(jax.random.key(0), (1, 20, 2))
  v = model.init(jax.random.key(1), x)
  full = model.apply(v, x)
  padded = jnp.concatenate([x, 100 * jnp.ones((1, 7, 2))], axis=1)
  out = model.apply(v, padded, jnp.array([20]))
  np.testing.assert_allclose(out, full, atol=1e-5)
  assert full.shape == (1, 3)
