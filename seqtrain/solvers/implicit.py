"""Forward-mode (and higher-order) derivatives of a solved recurrence.

A solve returns the exact trajectory z of z_t = f(p, z_{t-1}, x_t) (or, with
``reverse``, z_t = f(p, z_{t+1}, x_t)).  Its tangent is the solution of the
tangent linear recurrence

    dz_t = J_t dz_{t-1} + b_t,   J_t = df/dz (z_{t-1}, x_t),
    b_t = df/dp dp + df/dx dx_t  (+ J_1 dz_0 at the first step),

not the derivative of the solver's iterations (which would be neither exact
nor cheap, and which JAX cannot take through the batched solver loops).
``exact_jvp`` attaches that rule with ``jax.custom_jvp``; the tangent solve is
a ``lax.custom_linear_solve`` whose ``solve`` is the chunk-start Newton of
newton.py on the (linear) tangent recurrence and whose ``transpose_solve`` is
the same solver on the adjoint recurrence run the other way in time.  JAX can
therefore differentiate the tangent again, transpose it (reverse mode of it)
and batch it: ``jax.hessian`` (forward over reverse), reverse over reverse and
higher orders all see exact derivatives.  The first-order reverse pass keeps
its own lean custom VJP (api.py); this rule is used only when something takes
a forward-mode derivative of a solve.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from seqtrain.solvers.newton import newton_solve


def adjoint_step(fz: Callable):
  """One step of the adjoint recurrence in the w form, one exact VJP:
  (params, w_next, (g_t, zprev_t, x_t, ...)) -> w_t = J_t^T (g_t + w_next)."""
  def step(params, w_next, inp):
    g_t, zp_t, x_t = inp[:3]
    _, vjp = jax.vjp(lambda z: fz(params, z, x_t), zp_t)
    return vjp(g_t + w_next)[0]
  return step


def normalised(x, axis=None):
  """(x / s, s) with s = max |x| (1 where x is zero; with ``axis``, over the
  whole sharded sequence): the iterative linear solves measure their
  tolerances on O(1) right-hand sides."""
  scale = jnp.max(jnp.abs(x))
  if axis is not None:
    scale = jax.lax.pmax(scale, axis)
  scale = jnp.where(scale > 0, scale, jnp.ones_like(scale))
  return x / scale, scale


def _shift(first, z, reverse):
  """z_{t-1} at t (first at t = 0); with ``reverse`` z_{t+1} (first at the end)."""
  if reverse:
    return jnp.concatenate([z[1:], first[None]])
  return jnp.concatenate([first[None], z[:-1]])


def _transpose(a, kind):
  return a if kind == "diag" else jnp.swapaxes(a, -1, -2)


def _zero_tangent(x):
  x = jnp.asarray(x)
  if jnp.issubdtype(x.dtype, jnp.inexact):
    return jnp.zeros_like(x)
  return np.zeros(x.shape, dtype=jax.dtypes.float0)


def linear_recurrence_solver(fz: Callable, lin: Callable, *, kind: str, reverse: bool, atol,
                             rtol, chunk):
  """(params, zprev, xs) -> (solve(b), transpose_solve(g)) for the operator
  (A v)_t = v_t - J_t v_{t-1} (``reverse``: v_{t+1}) at the linearisation
  points zprev (T, D); both run newton.py's chunk-start solver with the exact
  sequential path as fallback, so both are exact."""
  def jv(params, zp, x, v):
    return jax.jvp(lambda zz: fz(params, zz, x), (zp,), (v,))[1]

  def tangent_step(params, v, inp):       # v_t = J_t v_prev + b_t
    zp, x, b = inp
    return jv(params, zp, x, v) + b

  def tangent_lin(params, v, inp):
    zp, x, _ = inp
    return tangent_step(params, v, inp), lin(params, zp, x)[1]

  adj_step = adjoint_step(fz)             # w_t = J_t^T (g_t + w_next)

  def adjoint_lin(params, w, inp):
    _, zp, x = inp
    return adj_step(params, w, inp), _transpose(lin(params, zp, x)[1], kind)

  def solvers(params, zprev, xs):
    def solve(_, b):
      bh, scale = normalised(b)
      v, _ = newton_solve(tangent_lin, params, jnp.zeros_like(b[0]), (zprev, xs, bh),
                          jnp.zeros_like(b), length=b.shape[0], kind=kind, atol=atol, rtol=rtol,
                          chunk=chunk, mode="shoot", reverse=reverse, fallback=tangent_step,
                          custom_batching=False)
      return v * scale

    def transpose_solve(_, g):
      # (A^T y)_t = y_t - J_next^T y_next: y = g + w shifted, w the adjoint recurrence.
      gh, scale = normalised(g)
      w, _ = newton_solve(adjoint_lin, params, jnp.zeros_like(g[0]), (gh, zprev, xs),
                          jnp.zeros_like(g), length=g.shape[0], kind=kind, atol=atol, rtol=rtol,
                          chunk=chunk, mode="shoot", reverse=not reverse, fallback=adj_step,
                          custom_batching=False)
      nxt = _shift(jnp.zeros_like(w[0]), w, not reverse)
      return (gh + nxt) * scale

    def matvec(v):
      vprev = _shift(jnp.zeros_like(v[0]), v, reverse)
      return v - jax.vmap(lambda zp, x, vp: jv(params, zp, x, vp))(zprev, xs, vprev)

    return matvec, solve, transpose_solve

  return solvers


def exact_jvp(solve_fn: Callable, fz: Callable, lin: Callable, *, kind: str, reverse: bool,
              atol, rtol, chunk):
  """``solve_fn(params, z0, xs) -> (z (T, D), stats)``, the exact solution of
  z_t = fz(params, z_{t-1}, x_t) (``reverse``: z_{t+1}), with its forward-mode
  derivative defined as that of the exact solution (module docstring).
  ``lin(params, z, x) -> (fz, A)`` gives the diagonal or dense Jacobian used to
  precondition the tangent solves."""
  solvers = linear_recurrence_solver(fz, lin, kind=kind, reverse=reverse, atol=atol, rtol=rtol,
                                     chunk=chunk)

  @jax.custom_jvp
  def solved(params, z0, xs):
    return solve_fn(params, z0, xs)

  @solved.defjvp
  def solved_jvp(primals, tangents):
    params, z0, xs = primals
    dp, dz0, dxs = tangents
    z, stats = solved(params, z0, xs)
    zprev = _shift(z0, z, reverse)
    first = z.shape[0] - 1 if reverse else 0
    dzprev = jnp.zeros_like(zprev).at[first].set(dz0)
    f_all = jax.vmap(fz, in_axes=(None, 0, 0))
    b = jax.jvp(f_all, (params, zprev, xs), (dp, dzprev, dxs))[1]
    matvec, solve, transpose_solve = solvers(params, zprev, xs)
    dz = lax.custom_linear_solve(matvec, b, solve, transpose_solve)
    return (z, stats), (dz, jax.tree_util.tree_map(_zero_tangent, stats))

  return solved
