"""Parallel linear recurrences: h_t = A_t h_{t-1} + b_t (or reverse in time).

Elements come in three structures, all sharing one associative combine:

* ``"diag"``:  A has the shape of b (T, D); products are elementwise.
* ``"dense"``: A is (T, D, D); products are matrix products at full float32
  precision (``Precision.HIGHEST``), so TF32 tensor cores on Ampere/Hopper
  cannot silently degrade the combine (docs/method.md, "TF32 trap").
* ``"block"``: A is (T, nb, bs, bs) acting on b of shape (T, nb * bs).

The Kalman filter/smoother elements used by the damped (ELK) solvers live here
too, because they are scans over the same kinds of elements.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax

from seqtrain.solvers.vma import like

HIGHEST = lax.Precision.HIGHEST
KINDS = ("diag", "dense", "block")


class DiagOps:
  """Linear algebra on diagonal matrices stored as vectors."""

  @staticmethod
  def mv(a, x):
    return a * x

  @staticmethod
  def mm(a, b):
    return a * b

  @staticmethod
  def t(a):
    """The adjoint (conjugate transpose; for real matrices the transpose)."""
    return jnp.conj(a)

  @staticmethod
  def eye(x):
    return jnp.ones_like(x)

  @staticmethod
  def solve(a, b):
    """a^{-1} b for matrix-shaped b (here: elementwise)."""
    return b / a

class DenseOps:
  """Linear algebra on dense matrices (last two axes), full precision."""

  @staticmethod
  def mv(a, x):
    return jnp.einsum("...ij,...j->...i", a, x, precision=HIGHEST)

  @staticmethod
  def mm(a, b):
    return jnp.matmul(a, b, precision=HIGHEST)

  @staticmethod
  def t(a):
    """The adjoint (conjugate transpose; for real matrices the transpose)."""
    return jnp.conj(jnp.swapaxes(a, -1, -2))

  @staticmethod
  def eye(x):
    d = x.shape[-1]
    return jnp.broadcast_to(jnp.eye(d, dtype=x.dtype), x.shape + (d,))

  @staticmethod
  def solve(a, b):
    """a^{-1} b for nonsingular a: ``gauss_jordan_solve`` on CPU, LAPACK-style
    pivoted LU (``jnp.linalg.solve``) on other backends (chosen at trace time)."""
    if jax.default_backend() == "cpu":
      return gauss_jordan_solve(a, b)
    return jnp.linalg.solve(a, jnp.broadcast_to(b, a.shape[:-1] + b.shape[-1:]))


def gauss_jordan_solve(a, b):
  """a^{-1} b by Gauss-Jordan elimination with partial pivoting, in plain jnp.

  Batched over the leading axes. Partial pivoting (the largest remaining entry of
  each column, by modulus) makes it valid for every nonsingular a: the matrices
  solved here, I + C J in the filter combine with C, J positive semi-definite,
  have eigenvalues >= 1 but can have a zero leading minor (C = v v^T, J = w w^T,
  v = (1, a), w = (1, -2/a): the first pivot of I + C J is 0), so the pivot-free
  form divides by zero on them. CPU uses this form because XLA:CPU deadlocked in
  LAPACK's batched solve inside loops (jaxlib 0.10.2, 2 cores).
  """
  d = a.shape[-1]
  b = jnp.broadcast_to(b, a.shape[:-1] + b.shape[-1:])
  rows = jnp.arange(d)

  def body(i, ab):
    a, b = ab
    col = jnp.abs(lax.dynamic_index_in_dim(a, i, axis=-1, keepdims=False))  # (..., d)
    p = jnp.argmax(jnp.where(rows >= i, col, -1.0), axis=-1)[..., None, None]
    is_i, is_p = (rows == i)[:, None], rows[:, None] == p          # (..., d, 1)

    def swap(m):   # rows i and p exchanged
      row_i = lax.dynamic_index_in_dim(m, i, axis=-2, keepdims=True)
      row_p = jnp.take_along_axis(m, p, axis=-2)
      return jnp.where(is_i, row_p, jnp.where(is_p, row_i, m))

    a, b = swap(a), swap(b)
    piv = lax.dynamic_index_in_dim(a, i, axis=-2, keepdims=True)  # (..., 1, d)
    pb = lax.dynamic_index_in_dim(b, i, axis=-2, keepdims=True)
    inv = 1.0 / lax.dynamic_index_in_dim(piv, i, axis=-1, keepdims=True)
    piv, pb = piv * inv, pb * inv
    col = lax.dynamic_index_in_dim(a, i, axis=-1, keepdims=True)  # (..., d, 1)
    col = jnp.where(is_i, 0, col)
    a = a - col * piv
    b = b - col * pb
    a = lax.dynamic_update_index_in_dim(a, piv, i, axis=-2)
    b = lax.dynamic_update_index_in_dim(b, pb, i, axis=-2)
    return a, b

  return lax.fori_loop(0, d, body, like((a, b), (a, b)))[1]


def ops_for(kind: str):
  if kind == "diag":
    return DiagOps
  if kind in ("dense", "block"):
    return DenseOps
  raise ValueError(f"unknown element kind {kind!r}; expected one of {KINDS}")


def _affine_combine(ops):
  def combine(e1, e2):
    a1, b1 = e1
    a2, b2 = e2
    return ops.mm(a2, a1), ops.mv(a2, b1) + b2
  return combine


def linear_scan(a, b, h0=None, *, kind: str = "diag", reverse: bool = False):
  """Solves h_t = A_t h_{t-1} + b_t for t = 0..T-1 with h_{-1} = h0 (or 0).

  With ``reverse=True`` it solves h_t = A_t h_{t+1} + b_t with h_T = h0 (or 0),
  the form of an adjoint recurrence.  Depth O(log T) via an associative scan.

  Args:
    a: (T, D) for "diag", (T, D, D) for "dense", (T, nb, bs, bs) for "block".
    b: (T, D).
    h0: optional (D,) boundary state.
    kind: "diag", "dense" or "block".
    reverse: run backwards in time.

  Returns:
    h: (T, D).
  """
  ops = ops_for(kind)
  if a.shape[0] != b.shape[0]:
    raise ValueError(f"A has {a.shape[0]} steps but b has {b.shape[0]}")
  if b.shape[0] == 0:
    return b
  shape = b.shape
  if kind == "block":
    nb, bs = a.shape[-3], a.shape[-1]
    if nb * bs != shape[-1]:
      raise ValueError(f"block elements {a.shape[1:]} do not tile state size {shape[-1]}")
    b = b.reshape(shape[:-1] + (nb, bs))
    if h0 is not None:
      h0 = h0.reshape(h0.shape[:-1] + (nb, bs))
  if h0 is not None:
    edge = -1 if reverse else 0
    b = b.at[edge].add(ops.mv(a[edge], h0))
  _, h = lax.associative_scan(_affine_combine(ops), (a, b), reverse=reverse)
  return h.reshape(shape)


def linear_scan_sequential(a, b, h0=None, *, kind: str = "diag", reverse: bool = False):
  """The same recurrence with lax.scan: the O(T)-depth reference."""
  ops = ops_for(kind)
  shape = b.shape
  if kind == "block":
    nb, bs = a.shape[-3], a.shape[-1]
    b = b.reshape(shape[:-1] + (nb, bs))
    h0 = None if h0 is None else h0.reshape(h0.shape[:-1] + (nb, bs))
  init = jnp.zeros_like(b[0]) if h0 is None else h0

  def body(h, ab):
    h = ops.mv(ab[0], h) + ab[1]
    return h, h

  _, h = lax.scan(body, init, (a, b), reverse=reverse)
  return h.reshape(shape)


def chunked_scan(combine, elems, identity, *, chunk: int | None = None, reverse: bool = False):
  """Inclusive scan of an associative ``combine`` over the leading axis.

  ``lax.associative_scan`` unrolls about 2 log2(T) copies of ``combine`` into
  the program; for a heavy combine (the Kalman elements, with matrix solves)
  XLA then takes minutes to compile at T = 1000.  Here ``combine`` is traced
  three times whatever T is: a sequential pass over the K positions of each
  chunk (vectorised over chunks), a Hillis-Steele scan over the C chunk totals
  (a fori_loop over log2 C levels), and one vectorised fix-up.

  Args:
    combine: (earlier, later) -> combined, on pytrees of arrays with any
      leading batch shape.
    elems: pytree of arrays with leading axis T.
    identity: shape -> identity element pytree with that leading shape.
  """
  leaves = jax.tree_util.tree_leaves(elems)
  t = leaves[0].shape[0]
  if reverse:
    elems = jax.tree_util.tree_map(lambda a: a[::-1], elems)
  k = chunk or max(1, int(math.ceil(math.sqrt(t))))
  c = -(-t // k)
  pad = c * k - t
  tmap = jax.tree_util.tree_map
  if pad:
    ident = identity((pad,))
    elems = tmap(lambda a, e: jnp.concatenate([a, e.astype(a.dtype)]), elems, ident)
  # (T, ...) -> (K, C, ...): position k of chunk c.
  elems = tmap(lambda a: jnp.swapaxes(a.reshape((c, k) + a.shape[1:]), 0, 1), elems)

  def local(kk, carry):
    acc, out = carry
    acc = combine(acc, tmap(lambda a: a[kk], elems))
    return acc, tmap(lambda o, a: o.at[kk].set(a), out, acc)

  ident_c = like(identity((c,)), elems)   # a constant, carried with varying values
  _, out = lax.fori_loop(0, k, local, (ident_c, tmap(jnp.zeros_like, elems)))
  totals = tmap(lambda o: o[k - 1], out)
  idx = jnp.arange(c)

  def level(lv, tot):
    off = 2 ** lv
    keep = (idx >= off)
    shifted = tmap(lambda a, e: jnp.where(keep.reshape((c,) + (1,) * (a.ndim - 1)),
                                          jnp.roll(a, off, axis=0), e), tot, ident_c)
    return combine(shifted, tot)

  levels = max(0, int(math.ceil(math.log2(c)))) if c > 1 else 0
  incl = lax.fori_loop(0, levels, level, totals)
  excl = tmap(lambda a, e: jnp.concatenate([e[:1], a[:-1]]), incl, ident_c)
  out = combine(tmap(lambda a: jnp.broadcast_to(a[None], (k,) + a.shape), excl), out)
  out = tmap(lambda a: jnp.swapaxes(a, 0, 1).reshape((c * k,) + a.shape[2:])[:t], out)
  if reverse:
    out = tmap(lambda a: a[::-1], out)
  return out


# --------------------------------------------------------------------------
# Parallel Kalman filter and RTS smoother (Sarkka & Garcia-Fernandez, 2021)
# for the ELK model  h_t = F_t h_{t-1} + u_t + N(0, I),  y_t = h_t + N(0, 1/lam),
# with h_{-1} = h0 known exactly.  Diagonal F gives one scalar model per
# dimension (quasi-ELK); dense F the full model (ELK).
# --------------------------------------------------------------------------


def _filter_combine(ops):
  def combine(ei, ej):
    a_i, b_i, c_i, eta_i, j_i = ei
    a_j, b_j, c_j, eta_j, j_j = ej
    eye = ops.eye(b_i)
    # M = (I + C_i J_j)^{-1};  N = (I + J_j C_i)^{-1} = M^T for symmetric C, J.
    m_lhs = eye + ops.mm(c_i, j_j)
    a_j_m = ops.t(ops.solve(ops.t(m_lhs), ops.t(a_j)))  # A_j M
    a = ops.mm(a_j_m, a_i)
    b = ops.mv(a_j_m, b_i + ops.mv(c_i, eta_j)) + b_j
    c = ops.mm(ops.mm(a_j_m, c_i), ops.t(a_j)) + c_j
    n_lhs = eye + ops.mm(j_j, c_i)
    a_i_t_n = ops.t(ops.solve(ops.t(n_lhs), a_i))  # A_i^T N
    eta = ops.mv(a_i_t_n, eta_j - ops.mv(j_j, b_i)) + eta_i
    j = ops.mm(ops.mm(a_i_t_n, j_j), a_i) + j_i
    # Symmetrise: round-off must not let covariances drift asymmetric.
    c = 0.5 * (c + ops.t(c))
    j = 0.5 * (j + ops.t(j))
    return a, b, c, eta, j
  return combine


def kalman_smoother_mean(f, u, y, h0, lam, *, kind: str = "diag", smooth: bool = True,
                         chunk: int | None = None):
  """Posterior mode of the ELK state-space model: the exact Levenberg-Marquardt step.

  Minimises  sum_t |h_t - F_t h_{t-1} - u_t|^2 + lam * sum_t |h_t - y_t|^2
  with h_{-1} = h0, in O(log T) depth.  With ``smooth=False`` returns the
  forward-filter means only (the causal approximation the reference code used).

  Args:
    f: (T, D) diagonal or (T, D, D) dense transition matrices.
    u: (T, D) offsets.  y: (T, D) observations (the current iterate).
    h0: (D,) known initial state.  lam: scalar damping > 0.
  """
  if kind not in ("diag", "dense"):
    raise ValueError(f"Kalman smoother supports 'diag' and 'dense', got {kind!r}")
  ops = ops_for(kind)
  dtype = u.dtype
  lam = jnp.asarray(lam, dtype)
  kappa = lam / (1.0 + lam)  # Kalman gain for Q = I, R = I / lam
  eye = ops.eye(u)
  innov = y - u
  a = (1.0 - kappa) * f
  b = u + kappa * innov
  c = (1.0 - kappa) * eye
  eta = kappa * ops.mv(ops.t(f), innov)
  jj = kappa * ops.mm(ops.t(f), f)
  # First element: condition on the exactly known h0.
  m1_prior = ops.mv(f[0], h0) + u[0]
  m1 = m1_prior + kappa * (y[0] - m1_prior)
  a = a.at[0].set(jnp.zeros_like(a[0]))
  b = b.at[0].set(m1)
  eta = eta.at[0].set(jnp.zeros_like(eta[0]))
  jj = jj.at[0].set(jnp.zeros_like(jj[0]))
  d = u.shape[-1]

  def identity(shape):
    zeros = jnp.zeros(shape + (d,), dtype)
    eye_m = ops.eye(zeros)
    return (eye_m, zeros, jnp.zeros_like(eye_m), zeros, jnp.zeros_like(eye_m))

  _, m, p, _, _ = chunked_scan(_filter_combine(ops), (a, b, c, eta, jj), identity, chunk=chunk)
  if not smooth or u.shape[0] == 1:
    return m
  # RTS smoother: x_t = E_t x_{t+1} + g_t, x_{T-1} = m_{T-1}.
  f_next, u_next = f[1:], u[1:]
  p_t, m_t = p[:-1], m[:-1]
  fp = ops.mm(f_next, p_t)  # F P
  s = ops.mm(fp, ops.t(f_next)) + ops.eye(m_t)  # F P F^T + I (symmetric)
  e = ops.t(ops.solve(s, fp))  # P F^T S^{-1}
  g = m_t - ops.mv(e, ops.mv(f_next, m_t) + u_next)
  e = jnp.concatenate([e, jnp.zeros_like(e[:1])])
  g = jnp.concatenate([g, m[-1:]])
  return linear_scan(e, g, kind=kind, reverse=True)
