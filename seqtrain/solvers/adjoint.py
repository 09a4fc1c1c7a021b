"""Backward pass: one adjoint linear recurrence at the converged trajectory.

    mu_{T-1} = g_{T-1},   mu_t = g_t + J_{t+1}^T mu_{t+1}
    dL/dparams = sum_t mu_t^T df/dparams(h_{t-1}, x_t),  likewise for x_t and h_0.

J is the TRUE Jacobian for every method ("dense", "quasi", "sequential"); only
``"approx"`` (the published code's choice for quasi methods) uses the diagonal
alone and is documented as approximate.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from jax import lax

from seqtrain.solvers import sharded
from seqtrain.solvers.fallback import sequential_fill
from seqtrain.solvers.implicit import adjoint_step, exact_jvp, normalised
from seqtrain.solvers.newton import newton_solve
from seqtrain.solvers.schedule import after
from seqtrain.solvers.scan import linear_scan
from seqtrain.solvers.stopping import real_dtype




def _shift_next(a, axis=None):
  """a_{t+1} at t, zero at the last step (with ``axis``: of the whole sequence,
  the next device's first step at a block's last)."""
  last = jnp.zeros_like(a[0]) if axis is None else sharded.from_next(a[0], axis, False)
  return jnp.concatenate([a[1:], last[None]])


def _vmapped(fz):
  return jax.vmap(fz, in_axes=(None, 0, 0))


def sequential_adjoint(fz, params, zprev, xs, g, axis=None):
  """Exact reverse recurrence with one VJP per step (O(T) depth; with ``axis``
  the carry goes from device to device, sharded.chain)."""
  def body(w, inp):
    g_t, zp_t, x_t = inp
    mu = g_t + w
    _, vjp = jax.vjp(lambda z: fz(params, z, x_t), zp_t)
    return vjp(mu)[0], mu

  def run(w_end):
    w, mu = lax.scan(body, w_end, (g, zprev, xs), reverse=True)
    return mu, w

  zero = jnp.zeros_like(g[0])
  if axis is None:
    return run(zero)[0]
  return sharded.chain(run, zero, jnp.zeros_like(g), axis, reverse=True)


def dense_adjoint(dense_lin, params, zprev, xs, g):
  """Parallel reverse scan with the materialised transposed Jacobians."""
  _, jac = jax.vmap(dense_lin, in_axes=(None, 0, 0))(params, zprev, xs)
  return linear_scan(_shift_next(jnp.swapaxes(jac, -1, -2)), g, kind="dense", reverse=True)


def quasi_adjoint(fz, diag_lin, params, zprev, xs, g, *, atol, rtol, max_iter):
  """Adjoint by diagonally preconditioned iteration with exact VJPs.

  Each iteration applies the true J^T (one VJP over all steps, in parallel) and
  corrects with a reverse elementwise scan using diag(J); the iteration is exact
  at its fixed point and, by causality, finishes in at most T iterations.

  Returns (mu, iterations, converged).
  """
  dtype = real_dtype(g.dtype)   # tolerances are real for complex states too
  _, diag = jax.vmap(diag_lin, in_axes=(None, 0, 0))(params, zprev, xs)
  d_next = _shift_next(diag)
  _, vjp_z = jax.vjp(lambda zp: _vmapped(fz)(params, zp, xs), zprev)
  gh, scale = normalised(g)
  atol = jnp.asarray(atol, dtype)
  rtol = jnp.asarray(rtol, dtype)

  def residual(mu):
    rho = mu - gh - _shift_next(vjp_z(mu)[0])
    return rho, jnp.max(jnp.abs(rho) / (atol + rtol * jnp.abs(mu)))

  def cond(state):
    it, _, _, ratio = state
    return (~(ratio <= 1.0)) & (it < max_iter)

  def body(state):
    it, mu, rho, _ = state
    mu = mu - linear_scan(d_next, rho, kind="diag", reverse=True)
    rho, ratio = residual(mu)
    return it + 1, mu, rho, ratio

  mu = linear_scan(d_next, gh, kind="diag", reverse=True)
  rho, ratio = residual(mu)
  it, mu, _, ratio = lax.while_loop(cond, body, (jnp.int32(0), mu, rho, ratio))
  return mu * scale, it, ratio <= 1.0


def approx_adjoint(diag_lin, params, zprev, xs, g):
  """The reference code's quasi gradient: diag(J) only.  APPROXIMATE."""
  _, diag = jax.vmap(diag_lin, in_axes=(None, 0, 0))(params, zprev, xs)
  return linear_scan(_shift_next(diag), g, kind="diag", reverse=True)


# Steps per block of input_gradients' VJP (at least; see _time_blocks).
GRADIENT_BLOCK = 2048


def _time_blocks(t: int, most: int = 16) -> int:
  """How many equal time blocks input_gradients takes its VJP in: up to ``most``,
  each of at least GRADIENT_BLOCK steps, dividing T (1 if none does)."""
  for n in range(min(most, t // GRADIENT_BLOCK), 1, -1):
    if t % n == 0:
      return n
  return 1


def input_gradients(fz: Callable, params, z0, zprev, xs, mu, axis=None):
  """Cotangents of (params, h0, xs) from the adjoint mu.  With ``axis`` they
  are this device's parts (the transpose of the varying cast sums them); h0
  enters the first device's block only.

  One VJP of the step at every position. Over a long sequence it runs block
  by block (a loop adding up the parameters' cotangents): its intermediates
  (the gates' cotangents, several times the states' size) then exist for one
  block at a time, not for all T steps."""
  vjp_of = lambda zp, x, m: jax.vjp(_vmapped(fz), params, zp, x)[1](m)
  t = mu.shape[0]
  n = _time_blocks(t)
  if n == 1:
    dparams, dzprev, dxs = vjp_of(zprev, xs, mu)
  else:
    size = t // n
    part = lambda a, i: lax.dynamic_slice_in_dim(a, i * size, size)
    put = lambda a, v, i: lax.dynamic_update_slice_in_dim(a, v, i * size, 0)

    def body(i, carry):
      acc, dzprev, dxs = carry
      dp, dzp, dx = vjp_of(part(zprev, i), jax.tree_util.tree_map(lambda a: part(a, i), xs),
                           part(mu, i))
      return (jax.tree_util.tree_map(jnp.add, acc, dp), put(dzprev, dzp, i),
              jax.tree_util.tree_map(lambda a, v: put(a, v, i), dxs, dx))

    # Outputs written in place, started from the adjoint (not from constants,
    # which XLA would materialise early and copy: schedule.after).
    zeros = lambda tree: after(jax.tree_util.tree_map(jnp.zeros_like, tree), mu, vary=True)
    acc = jax.tree_util.tree_map(lambda p: sharded.like(jnp.zeros_like(p), p), params)
    dparams, dzprev, dxs = lax.fori_loop(0, n, body, (acc, zeros(zprev), zeros(xs)))
  dz0 = dzprev[0]
  if axis is not None:
    dz0 = jnp.where(sharded.is_edge(axis, False), dz0, jnp.zeros_like(dz0))
  return dparams, dz0, dxs


def shoot_adjoint(fz, lin, params, zprev, xs, g, *, kind, atol, rtol, max_iter, chunk=None,
                  give_up=None, axis=None):
  """Exact adjoint by the forward solver's own multiple-shooting Newton.

  With w_t = J_t^T mu_t the adjoint is the reverse-time linear recurrence

      w_t = J_t^T (g_t + w_{t+1}),   w_T = 0,   mu_t = g_t + w_{t+1},

  whose step at t is one exact VJP at step t's own linearisation point.
  ``newton_solve`` (mode "shoot", reverse) runs it exactly inside chunks (one
  VJP per position, vectorised over chunks) and corrects the chunk boundaries
  with products of ``lin``'s Jacobians (diagonal or dense, transposed).  Being
  linear, it converges like the forward solve (typically 1-3 iterations); where
  it does not, the sequential adjoint is written in.  With ``axis`` it runs
  sequence-parallel, like the forward solve (first derivatives only: no
  exact_jvp rule there).

  Returns (mu, iterations, converged).
  """
  t = g.shape[0]
  gh, scale = normalised(g, axis)
  step = adjoint_step(fz)

  if kind == "diag":
    # Diagonals once for all steps (O(T D)); dense blocks are formed per pass.
    _, diag = jax.vmap(lin, in_axes=(None, 0, 0))(params, zprev, xs)
    inputs = (gh, zprev, xs, diag)
    lin_t = lambda p, w, inp: (step(p, w, inp), inp[3])
  else:
    inputs = (gh, zprev, xs)
    lin_t = lambda p, w, inp: (step(p, w, inp), jnp.swapaxes(lin(p, inp[1], inp[2])[1], -1, -2))

  def solve_w(p, w_end, inputs):
    # The zero start made from the cotangent: a constant one is materialised
    # (batched) early, one per layer, and held until that layer's adjoint runs.
    start = after(jnp.zeros((t,) + w_end.shape, w_end.dtype), inputs[0],
                  vary=True)
    return newton_solve(lin_t, p, w_end, inputs, start,
                        length=t, kind=kind, atol=atol, rtol=rtol, max_iter=max_iter,
                        chunk=chunk, mode="shoot", reverse=True, fallback=step, give_up=give_up,
                        axis=axis)

  if axis is None:
    # Derivatives of the gradient (jax.hessian, reverse over reverse) are exact.
    solve_w = exact_jvp(solve_w, step, lin_t, kind=kind, reverse=True, atol=atol, rtol=rtol,
                        chunk=chunk)
  w, st = solve_w(params, jnp.zeros_like(g[0]), inputs)
  return (gh + _shift_next(w, axis)) * scale, st.iterations, st.converged


def sequential_adjoint_fill(fz, ok, mu, params, zprev, xs, g):
  """``mu`` where the iterative adjoint converged, else the exact sequential adjoint.

  The sequential w recurrence of ``adjoint_step`` runs backwards in place
  (no reversed copies of the inputs), for a whole batch once, and only when
  some sequence failed; see fallback.py.
  """
  t = g.shape[0]
  w = sequential_fill(adjoint_step(fz), ok, jnp.zeros_like(g)[:, None], params,
                      jnp.zeros_like(g[0]), (g, zprev, xs), length=t, reverse=True)[:, 0]
  return jnp.where(ok, mu, g + _shift_next(w))
