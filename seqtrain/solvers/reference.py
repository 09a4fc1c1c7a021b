"""One Newton step written the way the papers write it: the yardstick.

Slow and plain on purpose (dense Jacobians from ``jax.jacfwd``, a sequential
``lax.scan`` for the linear recurrence, no chunks, no buffers, no resets): the
optimised per-step forms in ``newton.py`` must give the same iterate from the
same guess (tests/test_reference.py), and docs/method.md section 1 derives it.

The recurrence h_t = f(h_{t-1}, x_t), t = 1..T, with h_0 given, is the root of
the residual r_t(h) = h_t - f(h_{t-1}, x_t) (DEER: Lim et al. 2024, "Parallelizing
non-linear sequential models over the sequence length", ICLR). Newton's method
on r, linearised around the current guess h^(i), is the linear recurrence

    h_t^(i+1) = J_t h_{t-1}^(i+1) + (f(h_{t-1}^(i), x_t) - J_t h_{t-1}^(i)),
    J_t = df/dh (h_{t-1}^(i), x_t),

which a parallel (associative) scan solves in O(log T) depth; here lax.scan
solves it step by step. Quasi-DEER (Gonzalez et al. 2024, "Towards scalable and
stable parallelization of nonlinear RNNs", NeurIPS) keeps only diag(J_t).
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax import lax

__all__ = ["newton_step"]


def newton_step(step: Callable, params: Any, h0: jax.Array, xs: Any, guess: jax.Array, *,
                diagonal: bool = False) -> jax.Array:
  """The next Newton (DEER) iterate from ``guess`` (T, D); quasi-DEER with ``diagonal``.

  ``step(params, h, x) -> h'`` on flat states h of shape (D,); ``xs`` has a leading
  time axis of length T.
  """
  f = lambda h, x: step(params, h, x)
  prev = jnp.concatenate([h0[None], guess[:-1]])                    # h_{t-1}^(i)
  jac = jax.vmap(jax.jacfwd(f))(prev, xs)                           # J_t, (T, D, D)
  if diagonal:
    jac = jax.vmap(jnp.diag)(jax.vmap(jnp.diag)(jac))               # diag(J_t) only
  shift = jax.vmap(f)(prev, xs) - jnp.einsum("tij,tj->ti", jac, prev)

  def linear_step(h, jac_shift):
    j, b = jac_shift
    h = j @ h + b
    return h, h

  return lax.scan(linear_step, h0, (jac, shift))[1]
