"""Linear-recurrence scans and the Kalman smoother against direct references."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from seqtrain.solvers import kalman_smoother_mean, linear_scan, linear_scan_sequential
from seqtrain.solvers.scan import DenseOps, chunked_scan, gauss_jordan_solve, _affine_combine
from grids import FULL

pytestmark = pytest.mark.x64  # float64 exactness against lax.scan (tests/conftest.py)


def _elements(kind, t, d, seed):
  k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
  b = jax.random.normal(k2, (t, d))
  if kind == "diag":
    a = jax.random.uniform(k1, (t, d), minval=-1.1, maxval=1.1)
  elif kind == "dense":
    a = 0.9 * jax.random.orthogonal(k1, d, (t,))
  else:
    a = 0.9 * jax.random.orthogonal(k1, 2, (t, d // 2))
  return a, b


@settings(max_examples=12 if FULL else 6, deadline=None)
@given(kind=st.sampled_from(["diag", "dense", "block"]), t=st.integers(1, 300),
       half_d=st.integers(1, 4), reverse=st.booleans(), with_h0=st.booleans())
def test_linear_scan_matches_sequential(kind, t, half_d, reverse, with_h0):
  d = 2 * half_d
  a, b = _elements(kind, t, d, t + d)
  h0 = jnp.linspace(-1, 1, d) if with_h0 else None
  # jitted: one compile per example instead of one per operation and shape
  run = lambda fn: jax.jit(lambda a, b, h0: fn(a, b, h0, kind=kind, reverse=reverse))(a, b, h0)
  got, ref = run(linear_scan), run(linear_scan_sequential)
  np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-10)


def test_dense_combine_requests_full_precision():
  """The combine must not be lowered at default (TF32-capable) precision."""
  a, b = _elements("dense", 8, 4, 0)
  text = jax.jit(lambda a, b: linear_scan(a, b, kind="dense")).lower(a, b).as_text()
  assert "HIGHEST" in text or "precision_config" in text.lower() or "highest" in text


@pytest.mark.parametrize("chunk", [None, 1, 7, 64])
def test_chunked_scan_matches_associative(chunk):
  a, b = _elements("dense", 50, 3, 1)
  ident = lambda shape: (DenseOps.eye(jnp.zeros(shape + (3,))), jnp.zeros(shape + (3,)))
  _, got = chunked_scan(_affine_combine(DenseOps), (a, b), ident, chunk=chunk)
  np.testing.assert_allclose(got, linear_scan_sequential(a, b, kind="dense"), atol=1e-12)


def _lm_step_direct(f, u, y, h0, lam):
  """argmin sum |h_t - F_t h_{t-1} - u_t|^2 + lam |h_t - y_t|^2 by a dense solve."""
  t, d = u.shape
  n = t * d
  rows = []
  rhs = []
  for s in range(t):
    r = np.zeros((d, n))
    r[:, s * d:(s + 1) * d] = np.eye(d)
    c = np.array(u[s])
    if s > 0:
      r[:, (s - 1) * d:s * d] = -np.array(f[s])
    else:
      c = c + np.array(f[0]) @ np.array(h0)
    rows.append(r)
    rhs.append(c)
  for s in range(t):
    r = np.zeros((d, n))
    r[:, s * d:(s + 1) * d] = np.sqrt(lam) * np.eye(d)
    rows.append(r)
    rhs.append(np.sqrt(lam) * np.array(y[s]))
  sol = np.linalg.lstsq(np.vstack(rows), np.concatenate(rhs), rcond=None)[0]
  return sol.reshape(t, d)


@pytest.mark.parametrize("kind", ["diag", "dense"])
@pytest.mark.parametrize("lam", [1e-3, 1.0, 100.0])
@pytest.mark.parametrize("chunk", [None, 1, 4])
def test_kalman_smoother_is_exact_lm_step(kind, lam, chunk):
  t, d = 23, 3
  k = jax.random.split(jax.random.PRNGKey(5), 4)
  f = (1.5 * jax.random.normal(k[0], (t, d, d)) if kind == "dense"
       else 1.5 * jax.random.normal(k[0], (t, d)))
  u, y, h0 = (jax.random.normal(kk, s) for kk, s in zip(k[1:], [(t, d), (t, d), (d,)]))
  got = kalman_smoother_mean(f, u, y, h0, lam, kind=kind, chunk=chunk)
  fd = f if kind == "dense" else jax.vmap(jnp.diag)(f)
  np.testing.assert_allclose(got, _lm_step_direct(fd, u, y, h0, lam), rtol=1e-8, atol=1e-8)


def test_tiny_lambda_recovers_newton_step():
  t, d = 40, 2
  a, b = _elements("dense", t, d, 3)
  h0 = jnp.ones(d)
  got = kalman_smoother_mean(a, b, jnp.zeros((t, d)), h0, 1e-14, kind="dense")
  np.testing.assert_allclose(got, linear_scan_sequential(a, b, h0, kind="dense"), atol=1e-9)


def test_dense_solve_pivots():
  """The filter combine solves I + C J (C, J PSD): eigenvalues >= 1, yet its first
  pivot can be 0 (here exactly), which a pivot-free elimination divides by."""
  v, w = np.array([1.0, 0.5]), np.array([1.0, -4.0])
  m = np.eye(2) + np.outer(v, v) @ np.outer(w, w)
  assert m[0, 0] == 0.0 and np.linalg.eigvals(m).real.min() >= 1 - 1e-12
  rhs = np.array([[1.0, 2.0], [3.0, 4.0]])
  want = np.linalg.solve(m, rhs)
  np.testing.assert_allclose(gauss_jordan_solve(jnp.asarray(m), jnp.asarray(rhs)), want,
                             rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(DenseOps.solve(jnp.asarray(m), jnp.asarray(rhs)), want,
                             rtol=1e-6, atol=1e-6)
  # Batched, complex, against LAPACK; the non-CPU form (pivoted LU) agrees too.
  rng = np.random.default_rng(0)
  a = rng.normal(size=(3, 4, 5, 5)) + 1j * rng.normal(size=(3, 4, 5, 5))
  b = rng.normal(size=(3, 4, 5, 2)) + 1j * rng.normal(size=(3, 4, 5, 2))
  want = np.linalg.solve(a, b)
  dtype = jnp.complex128 if jax.config.jax_enable_x64 else jnp.complex64
  got = jax.jit(gauss_jordan_solve)(jnp.asarray(a, dtype), jnp.asarray(b, dtype))
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(jnp.linalg.solve(jnp.asarray(a, dtype), jnp.asarray(b, dtype)),
                             got, rtol=1e-4, atol=1e-4)
