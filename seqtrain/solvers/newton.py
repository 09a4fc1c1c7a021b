"""DEER and quasi-DEER: Newton iterations with a chunked, memory-lean scan.

Two formulations share the chunked layout (time split into C chunks of K steps):

* ``"shoot"`` (default): Newton on the C chunk starts only (multiple shooting).
  Each iteration runs the TRUE recurrence through every chunk from its current
  start (K sequential steps, vectorised over chunks and batch), accumulating
  the product of the chunk's Jacobians (diagonal: quasi-DEER; dense: DEER); a
  scan over the C chunk maps then gives the Newton update of the starts.  The
  residual is zero inside chunks, so the iteration converges in far fewer
  iterations than the per-step form (untrained GRU, T = 10^4: 1-3 against
  12-14) at the same cost per iteration, with no (K, C) buffers at all.
* ``"store"`` / ``"recompute"``: the papers' per-step Newton, below.

The per-step trajectory h_{1:T} is stored as an array Z of shape (K, C, D): time
t = c * K + k lives at Z[k, c].  One Newton iteration is

1. a lax.scan over the K positions of a chunk, vectorised over all C chunks:
   evaluate the step and its Jacobian at the previous iterate, measure the
   residual, and accumulate each chunk's local affine map (S, P): the local
   solution from a zero start and the product of the A_t;
2. a small associative scan over the C chunk maps for the true chunk starts H_c;
3. a fix-up: Z_new[k, c] = S[k, c] + P[k, c] H_c ("store" mode, one step
   evaluation per iteration) or a second pass that re-evaluates the step at the
   old iterate and runs the affine recurrence from H_c ("recompute" mode, two
   evaluations per iteration, no (K, C) buffers of A at all).

Nothing of size T is ever held per associative-scan level, which is where the
published implementation's 18x-output scratch memory came from.

The update itself is docs/method.md section 1 (chunk starts: section 2);
``reference.newton_step`` is it written plainly, and one per-step iteration here
must equal it (tests/test_reference.py).
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from seqtrain.solvers import sharded
from seqtrain.solvers.fallback import broadcast_unbatched, sequential_fill, vmap_axes
from seqtrain.solvers.scan import linear_scan, ops_for
from seqtrain.solvers.spec import DEFAULT_GIVE_UP, MODES
from seqtrain.solvers.stopping import (CONVERGED, clip_magnitude, exact_prefix,
                                       projected_too_long, real_dtype, status_code)



class NewtonStats(NamedTuple):
  iterations: jax.Array
  residual: jax.Array
  converged: jax.Array
  resets: jax.Array
  status: jax.Array   # stopping.STATUS code


def causal_bound(t: int, k: int, mode: str) -> int:
  """Iterations within which the solve ends from any start (exact arithmetic):
  the number of chunks (chunk-start form) or of steps (per-step forms)."""
  return -(-t // k) if mode == "shoot" else t


def default_chunk(t: int, kind: str = "dense", mode: str = "store") -> int:
  """Positions per chunk.

  "shoot": about 2 sqrt(T), capped at 32, and a divisor of T where one lies
  within a factor 2 of that (otherwise balanced to minimise padding).  Longer
  chunks mean fewer iterations (errors of the starts contract over a whole
  chunk) but more sequential steps per pass and, in the (C, K) layout, more
  strided reads; padding costs copies of the inputs and the output.

  Per-step modes: dense (DEER) about sqrt(T), capped at 128, which keeps the
  (C, D, D) chunk maps small; diagonal (quasi-DEER) at most 16.

  The caps were measured on CPU (benchmarks/results/cpu-2core-2026-11-27/layout_choices.md);
  gpu_suite.sh's ``chunks/`` step measures them on a GPU.
  """
  if mode == "shoot":
    target = max(1, min(32, int(math.ceil(2 * math.sqrt(t)))))
    divisors = [k for k in range(max(1, target // 2), min(t, 2 * target) + 1) if t % k == 0]
    if divisors:
      return min(divisors, key=lambda k: (abs(math.log(k / target)), -k))
    k = target
  else:
    cap = 16 if kind == "diag" else 128
    k = max(1, min(cap, int(math.ceil(math.sqrt(t)))))
  c = -(-t // k)
  return -(-t // c)


def gather_time(xs, idx):
  return jax.tree_util.tree_map(lambda a: a[idx], xs)


def to_chunks(z, k: int, c: int):
  """(T, D) -> (K, C, D), padding the tail by repeating the last state."""
  return jnp.swapaxes(_rows(z, k, c), 0, 1)


def from_chunks(zc, t: int):
  k, c = zc.shape[:2]
  return jnp.swapaxes(zc, 0, 1).reshape((k * c,) + zc.shape[2:])[:t]


def newton_solve(lin: Callable, params, z0, xs, zinit, *, length: int, kind: str,
                 atol: float, rtol: float, max_iter: int | None = None,
                 chunk: int | None = None, mode: str = "shoot", clip: float = 1e8,
                 fallback: Callable | None = None, reverse: bool = False,
                 give_up: float | None = DEFAULT_GIVE_UP, custom_batching: bool = True,
                 axis: str | None = None):
  """Runs (quasi-)Newton on the residual h_t - f(h_{t-1}, x_t).

  Args:
    lin: (params, z (D,), x) -> (f(z, x), A) with A diagonal (D,) or dense (D, D).
    z0: (D,) initial state.  xs: pytree with leading axis ``length``.
    zinit: (T, D) starting trajectory.
    kind: "diag" (quasi-DEER) or "dense" (DEER).
    mode: "shoot", "store" or "recompute" (see module docstring).
    fallback: optional fz(params, z, x); where the iteration did not converge
      the exact sequential trajectory is written over the iterate, in place.
    reverse: solve z_t = f(z_{t+1}, x_t) backwards from z_T = z0 ("shoot" only;
      the adjoint recurrence), without reversing any array.
    max_iter: iteration cap (None: the causal bound, ``causal_bound``).
    give_up: stop early when the projected iterations exceed this fraction of
      the causal bound (None or 0: never); see stopping.py.
    custom_batching: the batch-level loops of the shoot form and the fallback
      (custom_vmap rules); False inside other custom rules (implicit.py).
    axis: sequence parallelism ("shoot" only): called inside shard_map with the
      time axis sharded over this mesh axis; xs, zinit and the result are this
      device's block of ``length`` steps, z0 the state before the whole
      sequence (sharded.py).  Stats are identical on every device.

  Returns:
    (Z (T, D), NewtonStats).
  """
  if mode not in MODES:
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
  if reverse and mode != "shoot":
    raise ValueError("reverse=True needs mode='shoot'")
  if axis is not None and mode != "shoot":
    raise ValueError(f"mode={mode!r} is not sequence-parallel: use mode='shoot' with seq_axis")
  ops = ops_for(kind)
  t = length
  k = chunk or default_chunk(t, kind, mode)
  if k < 1:
    raise ValueError(f"chunk must be >= 1, got {k}")
  k = min(k, t)
  if axis is not None:
    # A block's last chunk end is the next device's start: no padding, so the
    # chunk length divides the block (the largest divisor not above k).
    k = max(d for d in range(1, k + 1) if t % d == 0)
  c = -(-t // k)
  devices = 1 if axis is None else sharded.axis_size(axis)
  if max_iter is None:
    max_iter = causal_bound(t, k, mode) * devices
  dtype = z0.dtype
  rdtype = real_dtype(dtype)
  lin_c = jax.vmap(lin, in_axes=(None, 0, 0))
  cidx = jnp.arange(c) * k
  atol = jnp.asarray(atol, rdtype)
  rtol = jnp.asarray(rtol, rdtype)

  def x_at(kk):
    return gather_time(xs, jnp.minimum(cidx + kk, t - 1))

  def starts_of(z):
    return jnp.concatenate([z0[None], z[k - 1, :-1]], axis=0)

  # Positions are visited with fori_loop and dynamic indexing (not lax.scan
  # over xs/ys): under vmap the batch axis then stays in front and no (K, C)
  # buffer is ever transposed, and the recompute pass updates Z in place.
  def linearise(z):
    """Residual of z and the chunk-local affine maps (S, P) of the Newton step."""
    zeros = jnp.zeros((c,) + z0.shape, dtype)
    p_init = ops.eye(zeros)
    if mode == "store":
      bufs = (jnp.zeros((k,) + zeros.shape, dtype), jnp.zeros((k,) + p_init.shape, dtype))
    else:
      bufs = ()

    def body(kk, carry):
      zprev, s, p, ratio, ratio_fin, absr, first_bad, first_nf, bufs = carry
      zk = z[kk]
      fx, a = lin_c(params, zprev, x_at(kk))
      valid = (cidx + kk < t)[:, None]
      r = jnp.abs(zk - fx)
      rn = jnp.where(valid, r / (atol + rtol * jnp.abs(zk)), 0)
      ratio = jnp.maximum(ratio, jnp.max(rn))
      ratio_fin = jnp.maximum(ratio_fin, jnp.max(jnp.where(jnp.isfinite(rn), rn, 0)))
      absr = jnp.maximum(absr, jnp.max(jnp.where(valid, r, 0)))
      # First unconverged / non-finite position of each chunk (exact prefix).
      first_bad = jnp.where((first_bad == k) & ~jnp.all(rn <= 1, axis=-1), kk, first_bad)
      nonfin = jnp.any(valid & ~jnp.isfinite(r), axis=-1)
      first_nf = jnp.where((first_nf == k) & nonfin, kk, first_nf)
      s = ops.mv(a, s - zprev) + fx
      p = ops.mm(a, p)
      if mode == "store":
        bufs = (bufs[0].at[kk].set(s), bufs[1].at[kk].set(p))
      return zk, s, p, ratio, ratio_fin, absr, first_bad, first_nf, bufs

    zero = jnp.zeros((), rdtype)
    none = jnp.full((c,), k, jnp.int32)
    init = vary((starts_of(z), zeros, p_init, zero, zero, zero, none, none, bufs))
    _, s_last, p_last, ratio, ratio_fin, absr, first_bad, first_nf, bufs = lax.fori_loop(
        0, k, body, init)
    # Global positions: the first unconverged step has an exact predecessor.
    t_bad = jnp.min(jnp.where(first_bad < k, cidx + first_bad, t))
    t_nf = jnp.min(jnp.where(first_nf < k, cidx + first_nf, t))
    return bufs, s_last, p_last, (ratio, ratio_fin), absr, t_bad, t_nf

  def chunk_starts(s_last, p_last):
    if c == 1:
      return z0[None]
    h = linear_scan(p_last[:-1], s_last[:-1], z0, kind="diag" if kind == "diag" else "dense")
    return jnp.concatenate([z0[None], h], axis=0)

  def clean(znew, zold):
    bad = ~jnp.isfinite(znew)
    # Non-finite iterates fall back to the previous iterate; huge ones are clipped.
    return jnp.where(bad, zold, clip_magnitude(znew, clip)), jnp.any(bad)

  def update(z, bufs, s_last, p_last, stop):
    """The next iterate (z itself where ``stop``), and whether a reset happened."""
    h = chunk_starts(s_last, p_last)
    if mode == "store":
      s, p = bufs
      znew, bad = clean(s + ops.mv(p, h[None]), z)
      return jnp.where(stop, z, znew), bad & ~stop

    def body(kk, carry):
      zprev_old, znew_prev, z, bad = carry
      zk_old = z[kk]
      fx, a = lin_c(params, zprev_old, x_at(kk))
      znew, bad_k = clean(fx + ops.mv(a, znew_prev - zprev_old), zk_old)
      znew = jnp.where(stop, zk_old, znew)
      return zk_old, znew, z.at[kk].set(znew), bad | bad_k

    _, _, z, bad = lax.fori_loop(0, k, body, vary((starts_of(z), h, z, jnp.bool_(False))))
    return z, bad & ~stop

  # Loop carries start device-varying (inside shard_map) where the values they take are.
  vary = lambda tree: sharded.like(tree, (params, z0, xs))

  if mode == "shoot":
    return _shoot(lin, params, z0, xs, zinit, t=t, k=k, c=c, ops=ops, kind=kind, atol=atol,
                  rtol=rtol, max_iter=max_iter, clip=clip, fallback=fallback, reverse=reverse,
                  give_up=give_up, custom_batching=custom_batching, axis=axis,
                  devices=devices)

  def cond(state):
    return ~state[-1]

  def body(state):
    n, z, _, _, resets, ratio1, _, _ = state
    bufs, s_last, p_last, (ratio, ratio_fin), absr, t_bad, t_nf = linearise(z)
    converged = ratio <= 1.0
    # The first unconverged step starts from an exact state: a non-finite value
    # there is the true recurrence's (see stopping.py).
    nonfinite = (t_nf <= t_bad) & (t_nf < t)
    # The projection ignores non-finite residuals (the prefix decides there).
    ratio1 = jnp.where(n == 1, ratio_fin, ratio1)
    gave_up = projected_too_long(n, ratio_fin, ratio1, t_bad + 1, t, give_up) & ~converged
    stop = converged | nonfinite | gave_up | (n >= max_iter)
    z, bad = update(z, bufs, s_last, p_last, stop)
    return (n + (~stop).astype(jnp.int32), z, ratio, absr, resets + bad.astype(jnp.int32),
            ratio1, status_code(converged, nonfinite, gave_up), stop)

  zero = jnp.zeros((), rdtype)
  state = vary((jnp.int32(0), to_chunks(zinit.astype(dtype), k, c), zero, zero, jnp.int32(0),
                zero, jnp.int32(0), jnp.bool_(False)))
  it, z, ratio, absr, resets, _, status, _ = lax.while_loop(cond, body, state)
  ok = status == CONVERGED
  if fallback is not None:
    z = sequential_fill(fallback, ok, z, params, z0, xs, length=t,
                        custom_batching=custom_batching)
  return from_chunks(z, t), NewtonStats(it, absr, ok, resets, status)


def _shoot(lin, params, z0, xs, zinit, *, t, k, c, ops, kind, atol, rtol, max_iter, clip,
           fallback, reverse, give_up, custom_batching, axis=None, devices=1):
  """Newton on the chunk starts (multiple shooting), exact steps inside chunks.

  The unknowns are the C chunk starts H_c (H_0 = z0).  One iteration is one pass
  over the K positions, vectorised over chunks: from H_c run the true recurrence
  through chunk c, accumulating the product P_c of its (diagonal or dense)
  Jacobians.  The residual of the trajectory so formed is zero inside chunks and
  H_c - E_{c-1} at chunk boundaries (E = chunk ends); the Newton step for the
  starts is the linear recurrence H'_c = E_{c-1} + P_{c-1} (H'_{c-1} - H_{c-1}),
  a scan over the C chunks.  The fixed point is the same trajectory, and after
  i iterations at least the first i chunks are exact.

  With ``reverse`` everything runs right to left (chunks, positions, the scan);
  the tail padding then goes in front, where it is visited last.

  With ``axis`` the C chunks are this device's; the scan over chunk maps, the
  residual at the block's first start, the stopping decision and the fallback
  span the devices (sharded.py).
  """
  dtype = z0.dtype
  rdtype = real_dtype(dtype)
  lin_c = jax.vmap(lin, in_axes=(None, 0, 0))
  pad = k * c - t
  # Layout (C, K, ...): chunk c holds rows [cK, cK + K), so going to and from
  # it is a free reshape (plus padding).  The transposed (K, C) layout reads
  # contiguous rows per position but needs transposes of the inputs and the
  # output (slower on CPU: benchmarks/results/cpu-2core-2026-11-27/layout_choices.md).
  rows = lambda a: _rows(a, k, c, front=reverse)
  xc = jax.tree_util.tree_map(rows, xs)
  # Loop carries start device-varying when the values they take are.
  # (over every axis the initial state varies over: solve() casts the inputs alike).
  vary_axes = sharded.varying_axes(z0) | ({axis} if axis else set())
  vary = lambda tree: sharded.varying(tree, vary_axes)
  last = 0 if reverse else k - 1   # the position a pass visits last
  # Chunks whose start is unknown: static on one device (implicit.py needs
  # that); with ``axis`` only the edge device's causally first chunk is known.
  static_linked = np.arange(c) != (c - 1 if reverse else 0)

  def linked_mask():
    if axis is None:
      return static_linked
    return jnp.asarray(static_linked) | ~sharded.is_edge(axis, reverse)

  def incoming(ends, z0):
    """The start each chunk should have, given every chunk's end."""
    if reverse:
      first = z0 if axis is None else sharded.boundary(z0, ends[0], axis, reverse)
      return jnp.concatenate([ends[1:], first[None]])
    first = z0 if axis is None else sharded.boundary(z0, ends[-1], axis, reverse)
    return jnp.concatenate([first[None], ends[:-1]])

  def clean(znew, zold):
    bad = ~jnp.isfinite(znew)
    return jnp.where(bad, zold, clip_magnitude(znew, clip)), bad

  def run_chunks(h, z, params, xc):
    """Trajectory z (C, K, D) from the starts h (C, D), the chunks' Jacobian
    products, and whether any state was reset."""
    def body(i, carry):
      zprev, p, z, bad = carry
      kk = k - 1 - i if reverse else i
      fx, a = lin_c(params, zprev, jax.tree_util.tree_map(lambda v: v[:, kk], xc))
      # Elementwise (no per-step reductions: they cost 15% of a pass): a reset
      # component keeps its old value and breaks the chain (its Jacobian row is
      # not that of the stored state).
      ok = jnp.isfinite(fx)
      fx = jnp.where(ok, clip_magnitude(fx, clip), z[:, kk])
      a = jnp.where((ok[..., None] if a.ndim > ok.ndim else ok) & jnp.isfinite(a), a, 0)
      return fx, ops.mm(a, p), z.at[:, kk].set(fx), bad | ~ok

    zprev, p, z, bad = lax.fori_loop(0, k, body,
                                     vary((h, ops.eye(h), z, jnp.zeros(h.shape, bool))))
    return p, z, jnp.any(bad, axis=-1)

  def update(h, ends, p, z0):
    """Newton step of the starts: H'_c = E_prev + P_prev (H'_prev - H_prev)."""
    if axis is not None:
      hnew = sharded.chunk_starts(p, ends - ops.mv(p, h), z0, kind=kind, axis=axis,
                                  reverse=reverse)
      return jnp.where(linked_mask()[:, None], clean(hnew, h)[0], z0)
    if c == 1:
      return h
    b = ends - ops.mv(p, h)
    if reverse:
      hnew = linear_scan(p[1:], b[1:], z0, kind=kind, reverse=True)
      hnew, _ = clean(hnew, h[:-1])
      return jnp.concatenate([hnew, z0[None]])
    hnew = linear_scan(p[:-1], b[:-1], z0, kind=kind)
    hnew, _ = clean(hnew, h[1:])
    return jnp.concatenate([z0[None], hnew])

  if axis is None:
    causal = (lambda a: a[::-1]) if reverse else (lambda a: a)
    total = lambda a: a
  else:
    causal = lambda a: sharded.gather_causal(a, axis, reverse)
    total = lambda a: sharded.all_max(a, axis)

  def body(state, params, z0, xc):
    n, h, z, _, _, resets, ratio1, _, done = state
    p, z, bad = run_chunks(h, z, params, xc)
    ends = z[:, last]
    linked = linked_mask()
    r = jnp.where(linked[:, None], jnp.abs(h - incoming(ends, z0)), 0)
    ratio_c = jnp.max(jnp.where(linked[:, None], r / (atol + rtol * jnp.abs(h)), 0), axis=-1)
    ratio = total(jnp.max(ratio_c))
    absr = total(jnp.max(r))
    # A trajectory with a reset anywhere is not the true recurrence's: never
    # converged.  A chunk with an exact start that meets a non-finite value
    # holds the true (non-finite) values: stop, the sequential path gives them.
    prefix, nonfinite = exact_prefix(causal(ratio_c <= 1.0), causal(bad))
    any_bad = total(jnp.any(bad))
    converged = (ratio <= 1.0) & ~any_bad
    ratio1 = jnp.where(n == 1, ratio, ratio1)
    gave_up = (projected_too_long(n, ratio, ratio1, prefix, c * devices, give_up) & ~converged
               & ~nonfinite)
    stop = converged | nonfinite | gave_up | (n >= max_iter)
    h = jnp.where(stop, h, update(h, ends, p, z0))
    if axis is not None and len(vary_axes) > 1:
      # On a mesh with more axes (a batch shard per ``data`` row) every device runs
      # the same number of passes, so that all execute the same collectives (the
      # CPU runtime's permutes meet all devices of the program); a stopped row
      # repeats its pass with the same starts, as a stopped sequence under vmap.
      stop = ~sharded.all_max(~stop, vary_axes)
    # `done` sequences (only under vmap, see below) repeat their last pass with
    # the same starts, so everything but the reset count comes out unchanged.
    return vary((n + (~stop).astype(jnp.int32), h, z, ratio, absr,
                 resets + (any_bad & ~done).astype(jnp.int32), ratio1,
                 status_code(converged, nonfinite, gave_up), stop))

  # Under vmap a while_loop runs until every sequence stops and selects between
  # old and new carries for all of them: a copy of the whole trajectory per
  # iteration.  Here stopped sequences keep their starts instead, so their
  # pass rewrites the same trajectory and nothing needs selecting.
  def plain_loop(state, params, z0, xc):
    return lax.while_loop(lambda s: ~s[-1], lambda s: body(s, params, z0, xc), state)

  solve_loop = jax.custom_batching.custom_vmap(plain_loop) if custom_batching else plain_loop

  @(solve_loop.def_vmap if custom_batching else (lambda f: f))
  def _solve_loop_vmap(axis_size, in_batched, state, params, z0, xc):
    s_b, p_b, z0_b, x_b = in_batched
    state, z0 = broadcast_unbatched(axis_size, (state, z0), (s_b, z0_b))
    body_b = jax.vmap(body, in_axes=(0, vmap_axes(p_b), 0, vmap_axes(x_b)), axis_size=axis_size)
    out = lax.while_loop(lambda s: ~jnp.all(s[-1]), lambda s: body_b(s, params, z0, xc), state)
    return out, jax.tree_util.tree_map(lambda _: True, out)

  zc = rows(zinit.astype(dtype))
  h = jnp.where(linked_mask()[:, None], incoming(zc[:, last], z0), z0)
  zero = jnp.zeros((), rdtype)
  state = vary((jnp.int32(0), h, zc, zero, zero, jnp.int32(0), zero, jnp.int32(0),
                jnp.bool_(False)))
  it, h, z, ratio, absr, resets, _, status, _ = solve_loop(state, params, z0, xc)
  ok = status == CONVERGED
  offset = pad if reverse else 0
  if fallback is not None:
    def fill(start):
      zf = sequential_fill(fallback, ok, z, params, start, xc, length=t, reverse=reverse,
                           offset=offset, chunk_major=True, custom_batching=custom_batching)
      return zf, zf[0, 0] if reverse else zf[c - 1, k - 1]   # no padding with axis
    # Across devices the carry is passed block to block (sharded.chain).
    z = fill(z0)[0] if axis is None else sharded.chain(fill, z0, z, axis, reverse)
  # A converged trajectory holds the starts at chunk boundaries, so its residual
  # is exactly the one measured (zero inside chunks).  An elementwise select
  # after the fallback (which rewrites failed sequences whole), not an update of
  # the loop's buffer: that cost a copy of the trajectory.
  if c > 1 or axis is not None:
    if reverse:  # chunk c's first position is where chunk c - 1 starts
      hb, take = jnp.concatenate([h[:1], h[:-1]]), jnp.arange(c) > 0
    else:  # chunk c's last position is where chunk c + 1 starts
      hb, take = jnp.concatenate([h[1:], h[-1:]]), jnp.arange(c) < c - 1
    if axis is not None:  # the causally last chunk: the next device's first start
      edge_chunk = 0 if reverse else c - 1
      nxt = sharded.from_next(h[c - 1 if reverse else 0], axis, reverse)
      hb = hb.at[edge_chunk].set(nxt)
      take = take.at[edge_chunk].set(~sharded.is_last(axis, reverse))
    at = take[:, None] & (jnp.arange(k) == last)[None, :]
    if fallback is not None:
      at = at & ok
    z = jnp.where(at[..., None], hb[:, None, :], z)
  return (z.reshape((c * k,) + z0.shape)[offset:offset + t],
          NewtonStats(it, absr, ok, resets, status))


def _rows(a, k: int, c: int, front: bool = False):
  """(T, ...) -> (C, K, ...): rows [cK, cK + K); padding repeats the last (or first) row."""
  pad = k * c - a.shape[0]
  if pad:
    edge = a[:1] if front else a[-1:]
    fill = jnp.broadcast_to(edge, (pad,) + a.shape[1:])
    a = jnp.concatenate([fill, a] if front else [a, fill])
  return a.reshape((c, k) + a.shape[1:])
