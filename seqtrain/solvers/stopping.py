"""Why an iterative solve stops: convergence, non-finite values, giving up.

Every parallel solver keeps, per iteration, the length of its *exact prefix*:
the number of leading blocks (chunks in the chunk-start form, time steps in
the per-step forms) whose starting state is already the true one, because
every block before them met the tolerance and ran the true recurrence without
a reset.  By causality this prefix grows by at least one block per iteration,
which bounds the iterations by the number of blocks.  Two decisions use it:

* non-finite values: a block that starts from an exact state and still meets a
  non-finite value (NaN / inf in the inputs, parameters or h0, or an overflow
  of the true recurrence) holds what lax.scan would hold there.  The iteration
  cannot converge to it (non-finite iterates are reset), so it stops at once
  with status "nonfinite" and the exact sequential path takes over, giving
  exactly the scan's values.  Resets elsewhere (a bad guess overflowing) are
  the iteration's own business and do not stop it.
* giving up: from the residual's decay since the first iteration and the
  prefix's growth, the solver projects the iterations it still needs; when
  that exceeds ``give_up`` times the block count (the causal bound) it stops
  with status "gave_up".  One chunk-start iteration has the depth of one chunk
  (K steps) plus a scan over the chunk maps, so at half the bound of C chunks
  the parallel solve's depth is about the sequential recurrence's T = C K
  steps with the iterations' overhead on top: past that it cannot pay.  A
  chaotic recurrence (errors grow faster than Newton contracts them, the
  prefix grows by one block per iteration) is projected at the full bound and
  goes to the exact sequential path after ``GIVE_UP_MIN_ITERS`` iterations
  instead of running to it; a contracting one converging linearly or faster
  is projected at a count that does not grow with T and is left alone.
"""
from __future__ import annotations

import jax.numpy as jnp

STATUS = ("converged", "max_iter", "gave_up", "nonfinite")
CONVERGED, MAX_ITER, GAVE_UP, NONFINITE = range(4)
GIVE_UP_MIN_ITERS = 3



def real_dtype(dtype):
  """The real dtype of residuals and tolerances for a state dtype (complex64 ->
  float32)."""
  return jnp.finfo(dtype).dtype


def clip_magnitude(z, clip: float):
  """z with every component's magnitude capped at ``clip`` (complex components
  keep their phase)."""
  if jnp.iscomplexobj(z):
    m = jnp.abs(z)
    return jnp.where(m > clip, z * (clip / jnp.maximum(m, clip)), z)
  return jnp.clip(z, -clip, clip)


def exact_prefix(ok, bad):
  """Blocks in causal order: ``ok`` (N,) the block's start met the tolerance
  (True for the first block, whose start is h0), ``bad`` (N,) the block met a
  non-finite value.  Returns (prefix length, whether a block with an exact
  start met a non-finite value)."""
  clean_before = jnp.concatenate([jnp.ones((1,), bool), jnp.cumsum(bad)[:-1] == 0])
  exact = jnp.cumprod((ok & clean_before).astype(jnp.int32)).astype(bool)
  return jnp.sum(exact.astype(jnp.int32)), jnp.any(exact & bad)


def projected_too_long(n, ratio, ratio1, prefix, bound: int, give_up):
  """Whether the solve, after ``n`` iterations, is projected to need more than
  ``give_up * bound`` iterations in all.

  ratio / ratio1: normalised residual now and after the first iteration;
  prefix: exact-prefix length (>= 1); bound: number of blocks.  The projection
  is the more optimistic of geometric residual decay at the rate seen since
  iteration 1 and linear prefix growth at the rate seen since the start.
  """
  if not give_up:
    return jnp.bool_(False)
  dtype = ratio.dtype if jnp.issubdtype(ratio.dtype, jnp.floating) else jnp.float32
  nf = n.astype(dtype)
  ratio = ratio.astype(dtype)
  ratio1 = ratio1.astype(dtype)
  q = (ratio / ratio1) ** (1 / jnp.maximum(nf - 1, 1))
  inf = jnp.asarray(jnp.inf, dtype)
  rem_resid = jnp.where((q < 1) & (ratio > 1),
                        jnp.log(jnp.maximum(ratio, 1)) / -jnp.log(jnp.minimum(q, 0.999999)), inf)
  rate = (prefix.astype(dtype) - 1) / jnp.maximum(nf, 1)
  rem_prefix = jnp.where(rate > 0, (bound - prefix.astype(dtype)) / rate, inf)
  projected = nf + jnp.minimum(rem_resid, rem_prefix)
  # Short problems (a few blocks) are left to max_iter: nothing to save there.
  return (n >= GIVE_UP_MIN_ITERS) & (projected > max(give_up * bound, 2 * GIVE_UP_MIN_ITERS))


def status_code(converged, nonfinite, gave_up):
  return jnp.where(converged, CONVERGED,
                   jnp.where(nonfinite, NONFINITE, jnp.where(gave_up, GAVE_UP, MAX_ITER))
                   ).astype(jnp.int32)
