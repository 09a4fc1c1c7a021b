"""The one public entry point: ``solve(step, params, h0, xs, method=...)``."""
from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.flatten_util import ravel_pytree

from seqtrain.solvers import adjoint as adj
from seqtrain.solvers import sharded
from seqtrain.solvers.elk import elk_solve
from seqtrain.solvers.fallback import sequential_fill
from seqtrain.solvers.implicit import exact_jvp
from seqtrain.solvers.jacobians import (dense_linearization, flat_diag_hook, flat_step,
                                        jvp_diag_linearization)
from seqtrain.solvers.newton import MODES, newton_solve
from seqtrain.solvers.stopping import DEFAULT_GIVE_UP, STATUS, real_dtype

METHODS = ("sequential", "deer", "quasi_deer", "elk", "quasi_elk")
ALIASES = {"ike": "elk", "quasi_ike": "quasi_elk"}
AUTO = "auto"
# Shortest sequence at which the parallel method beats lax.scan, per platform
# (None: never).  Measured tables: README "Choosing a method" and
# benchmarks/results/; gpu_suite.sh re-measures the GPU rows.
CROSSOVER = {"cpu": None, "gpu": 256, "cuda": 256, "rocm": 256, "tpu": 256}
PARALLEL_DEFAULT = "quasi_deer"
ON_FAILURE = ("sequential", "return", "raise")
INITS = ("zeros", "warm")


class SolveInfo(NamedTuple):
  """Diagnostics of one solve (arrays; batched under vmap).

  iterations: Newton/LM iterations taken (rejected damped steps included).
  residual:   max |h_t - f(h_{t-1}, x_t)| of the parallel solver's last iterate.
  converged:  whether that iterate met atol + rtol * |h| at every step.
  fallback:   True where the result came from the sequential fallback.
  lam:        final damping (damped methods; 0 otherwise).
  resets:     iterations in which non-finite iterates were reset.
  status:     why the parallel solver stopped, an index into ``STATUS``:
              "converged"; "max_iter"; "gave_up" (projected to need more than
              ``give_up`` of the causal bound: chaotic or too slow); "nonfinite"
              (the true recurrence has NaN / inf: the sequential result is
              returned, exactly lax.scan's, where on_failure="sequential").
  """
  iterations: jax.Array
  residual: jax.Array
  converged: jax.Array
  fallback: jax.Array
  lam: jax.Array
  resets: jax.Array
  status: jax.Array


class SolverError(RuntimeError):
  """Raised (through the runtime) when on_failure='raise' and a solve fails."""


def default_tolerances(dtype) -> tuple[float, float]:
  """(atol, rtol) on the per-step residual for a state dtype (complex states:
  those of their real dtype)."""
  dtype = jnp.dtype(real_dtype(dtype))
  if dtype == jnp.float64:
    return 1e-10, 1e-10
  if dtype == jnp.float32:
    return 1e-5, 1e-5
  return 1e-2, 1e-2


def canonical_method(method: str) -> str:
  """The method's canonical name ("auto" stays "auto": see ``resolve_method``)."""
  name = ALIASES.get(method, method)
  if name not in METHODS + (AUTO,):
    valid = ", ".join((AUTO,) + METHODS + tuple(ALIASES))
    raise ValueError(f"unknown solver method {method!r}; valid methods: {valid}")
  return name


def resolve_method(method: str, length: int, backend: str | None = None,
                   devices: int = 1) -> str:
  """The method that runs: ``method`` itself, or for "auto" the fastest exact
  method for the platform and sequence length (``CROSSOVER``): lax.scan where
  the parallel solver cannot pay (CPU; short sequences), quasi-DEER otherwise,
  and always quasi-DEER for a sequence split over ``devices`` > 1 (a sequential
  chain would leave all devices but one idle).  ``length``: the whole sequence's.
  Static: decided at trace time from the backend and the shapes."""
  name = canonical_method(method)
  if name != AUTO:
    return name
  if devices > 1:
    return PARALLEL_DEFAULT
  platform = (backend or jax.default_backend()).lower()
  crossover = CROSSOVER.get(platform, CROSSOVER["gpu"])
  return PARALLEL_DEFAULT if crossover is not None and length >= crossover else "sequential"


def _sequence_length(xs, length):
  leaves = jax.tree_util.tree_leaves(xs)
  lengths = {np.shape(leaf)[0] if np.ndim(leaf) else None for leaf in leaves}
  if None in lengths:
    raise ValueError("every leaf of xs needs a leading time axis; found a scalar leaf")
  if len(lengths) > 1:
    raise ValueError(f"leaves of xs disagree on the time axis length: {sorted(lengths)}")
  if lengths:
    (t,) = lengths
    if length is not None and length != t:
      raise ValueError(f"length={length} but xs has {t} steps")
  elif length is None:
    raise ValueError("xs has no arrays: pass length= for the number of steps")
  else:
    t = length
  if t < 1:
    raise ValueError(f"sequence length must be >= 1, got {t}")
  return int(t)


def _raise_on_failure(converged, residual, iterations, method):
  if not bool(np.all(converged)):
    raise SolverError(
        f"{method} did not converge: residual {np.max(residual):.3e} after "
        f"{int(np.max(iterations))} iterations (on_failure='raise')")


def _check_sequence_parallel(method, mode, adjoint, axis):
  if method in ("elk", "quasi_elk"):
    other = "quasi_deer" if method == "quasi_elk" else "deer"
    raise ValueError(
        f"method {method!r} is not sequence-parallel (seq_axis={axis!r}): its Kalman smoother "
        f"runs over the whole sequence on one device; use {other!r} (undamped Newton, "
        f"the same fixed point) or 'sequential'")
  if mode not in (None, "shoot"):
    raise ValueError(f"mode={mode!r} is not sequence-parallel (seq_axis={axis!r}); use "
                     f"mode='shoot' (the default)")
  if adjoint not in (None, "shoot", "sequential"):
    raise ValueError(f"adjoint={adjoint!r} is not sequence-parallel (seq_axis={axis!r}); use "
                     f"'shoot' (the default) or 'sequential'")


def solve(step: Callable, params: Any, h0: Any, xs: Any, method: str = "auto", *,
          length: int | None = None,
          atol: float | None = None, rtol: float | None = None, max_iter: int | None = None,
          give_up: float | None = DEFAULT_GIVE_UP,
          init: Any = "zeros", on_failure: str = "sequential",
          diag_jacobian: Callable | None = None, jvp_batch: int | None = None,
          chunk: int | None = None, mode: str | None = None, adjoint: str | None = None,
          lam_init: float = 1e-3, adaptive_lambda: bool = True, elk_step: str = "smoother",
          clip: float = 1e8, unroll: int | bool = 1, seq_axis: str | None = None):
  """Evaluates h_t = step(params, h_{t-1}, x_t), t = 1..T, in parallel over T.

  Args:
    step: pure function (params, h, x) -> h_next; h may be any pytree of arrays
      (e.g. an LSTM's (c, h)).  Everything traced that it uses should come in
      through ``params`` (closed-over arrays are hoisted and differentiated too).
    params: pytree of parameters (differentiable).
    h0: initial state pytree (differentiable).
    xs: pytree of inputs with leading time axis T (differentiable), or None
      with ``length``.
    method: "auto" (see ``resolve_method``), "sequential" (lax.scan), "deer" (Newton, dense Jacobian),
      "quasi_deer" (diagonal Jacobian), "elk" (damped, dense), "quasi_elk"
      (damped, diagonal); "ike"/"quasi_ike" are aliases of the damped ones.
    atol, rtol: per-step residual tolerance |r_t| <= atol + rtol |h_t|
      (default per dtype, see ``default_tolerances``).
    max_iter: cap on iterations (default: the causal bound of the form, within
      which Newton ends from any start: the number of chunks for the chunk-start
      DEER / quasi-DEER, T for the per-step forms and ELK).
    give_up: stop early, and take the sequential path, when the iterations the
      solve is projected to need exceed this fraction of the causal bound
      (after at least 3 iterations; None or 0: never).  See
      ``seqtrain/solvers/stopping.py`` and docs/method.md.
    init: "zeros", "warm" (h_t = f(h0, x_t), computed in parallel) or a
      trajectory pytree shaped like the output.
    on_failure: "sequential" (default: exact lax.scan result, info.fallback set),
      "return" (the unconverged iterate, info.converged False) or "raise".
    diag_jacobian: optional analytic hook (params, h, x) -> (h_next, diag(df/dh))
      used by the quasi methods instead of the JVP fallback.
    jvp_batch: JVP directions per block in the generic diagonal (default all).
    chunk: positions per chunk of the chunked solvers (default by T and mode,
      see ``newton.default_chunk``).
    mode: DEER / quasi-DEER formulation: "shoot" (default: Newton on the chunk
      starts, exact steps inside chunks; same fixed point, few iterations),
      or the papers' per-step Newton: "store" (chunk maps kept) or "recompute"
      (second pass instead of storage).
    adjoint: backward pass: "shoot" (default: the adjoint recurrence solved like
      the forward, exact VJPs inside chunks, diag(J) or dense J products across
      them), "dense" (materialised (T, D, D) Jacobians), "quasi" (diagonally
      preconditioned iteration with exact VJPs), "sequential" (lax.scan), all
      exact; or "approx" (diag(J) only: the reference code's APPROXIMATE
      gradient, cheaper and wrong by tens of percent for dense-weight cells).
    lam_init, adaptive_lambda, elk_step: damped methods: initial lambda,
      gain-ratio adaptation (False: fixed lambda, all steps accepted, as in the
      paper), "smoother" (exact LM step) or "filter" (the paper's filter-only step).
    clip: magnitude at which iterates are clipped (non-finite ones are reset).
    unroll: lax.scan's ``unroll`` for the sequential method (and its fallback
      is unchanged); the parallel methods ignore it.
    seq_axis: sequence parallelism.  Call ``solve`` inside ``jax.shard_map``
      with xs sharded along time over this mesh axis (P devices, device p
      holding steps [p T/P, (p+1) T/P)); xs / init / the result are this
      device's block, h0 the state before the whole sequence.  Methods
      "sequential" (the carry passed device to device), "deer" and
      "quasi_deer" (mode "shoot": local chunks, the chunk-start scan and the
      stopping test across devices; docs/method.md); adjoints "shoot" and
      "sequential".  ``info`` is identical on every device.  Replicated
      params / h0 are cast to device-varying (their gradients are summed over
      the axis).  First derivatives only (no exact rule for jax.hessian).

  Returns:
    (hs, info): hs has the structure of h0 with a leading axis T (states 1..T);
    info is a ``SolveInfo``.
  """
  method = canonical_method(method)
  if on_failure not in ON_FAILURE:
    raise ValueError(f"on_failure must be one of {ON_FAILURE}, got {on_failure!r}")
  if elk_step not in ("smoother", "filter"):
    raise ValueError(f"elk_step must be 'smoother' or 'filter', got {elk_step!r}")
  if adjoint is not None and adjoint not in adj.ADJOINTS:
    raise ValueError(f"adjoint must be one of {adj.ADJOINTS}, got {adjoint!r}")
  if mode is not None and mode not in MODES:
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
  if max_iter is not None and max_iter < 0:
    raise ValueError(f"max_iter must be >= 0, got {max_iter}")
  if give_up is not None and not 0 <= give_up:
    raise ValueError(f"give_up must be >= 0 or None, got {give_up}")
  t = _sequence_length(xs, length)
  devices = 1 if seq_axis is None else sharded.axis_size(seq_axis)
  method = resolve_method(method, t * devices, devices=devices)
  if seq_axis is not None:
    _check_sequence_parallel(method, mode, adjoint, seq_axis)
    # one varying type for all inputs (e.g. a batch shard's: data and seq), so that
    # loop carries started from h0 type-check against the values they take
    params, h0, xs = sharded.varying(
        (params, h0, xs), sharded.tree_varying_axes((params, h0, xs)) | {seq_axis})
  z0, unravel = ravel_pytree(h0)
  if not jnp.issubdtype(z0.dtype, jnp.inexact):
    raise TypeError(f"the state must be floating point or complex, got {z0.dtype}")
  d_atol, d_rtol = default_tolerances(z0.dtype)
  atol = d_atol if atol is None else atol
  rtol = d_rtol if rtol is None else rtol
  quasi = method in ("quasi_deer", "quasi_elk")
  kind = "diag" if quasi else "dense"
  mode = mode or "shoot"
  adjoint = adjoint or "shoot"

  def unravel_traj(z):
    return jax.vmap(unravel)(z)

  if method == "sequential":
    def body(h, x):
      # The state keeps its dtype (as the parallel methods keep it): a float32
      # carry stays float32 under float64 inputs or parameters.
      h = jax.tree_util.tree_map(lambda new, old: new.astype(old.dtype), step(params, h, x), h)
      return h, h

    def run_block(start):
      end, hs = lax.scan(body, start, xs, length=t, unroll=unroll)
      return hs, end

    if seq_axis is None:
      hs = run_block(h0)[0]
    else:
      zeros = jax.tree_util.tree_map(lambda h: jnp.zeros((t,) + jnp.shape(h), h.dtype), h0)
      hs = sharded.chain(run_block, h0, zeros, seq_axis, reverse=False)
    zero = jnp.zeros((), real_dtype(z0.dtype))
    info = SolveInfo(jnp.int32(0), zero, jnp.bool_(True), jnp.bool_(False), zero, jnp.int32(0),
                     jnp.int32(0))
    return hs, info

  # Hoist closed-over arrays into explicit (differentiable) arguments.
  x_first = jax.tree_util.tree_map(lambda a: a[0], xs)
  fz_closed, consts = jax.closure_convert(flat_step(step, unravel), params, z0, x_first)
  fz = lambda p, z, x: fz_closed(p[0], z, x, *p[1])
  hook_consts = ()
  if quasi and diag_jacobian is not None:
    hook_closed, hook_consts = jax.closure_convert(
        flat_diag_hook(diag_jacobian, unravel), params, z0, x_first)
    diag_lin = lambda p, z, x: hook_closed(p[0], z, x, *p[2])
  else:
    diag_lin = jvp_diag_linearization(fz, jvp_batch)
  dense_lin = dense_linearization(fz)
  lin = diag_lin if quasi else dense_lin
  all_params = (params, tuple(consts), tuple(hook_consts))

  if isinstance(init, str):
    if init not in INITS:
      raise ValueError(f"init must be one of {INITS} or a trajectory, got {init!r}")
  else:
    z_init_given = jax.vmap(lambda h: ravel_pytree(h)[0])(init)
    if z_init_given.shape != (t,) + z0.shape:
      raise ValueError(
          f"init trajectory has flat shape {z_init_given.shape}, expected {(t,) + z0.shape}")

  def core(p, z0_, xs_):
    """The parallel solve: (trajectory, solver stats)."""
    if isinstance(init, str) and init == "zeros":
      zinit = jnp.zeros((t,) + z0_.shape, z0_.dtype)
    elif isinstance(init, str):
      zinit = jax.vmap(fz, in_axes=(None, None, 0))(p, z0_, xs_)
    else:
      zinit = z_init_given.astype(z0_.dtype)
    common = dict(kind=kind, atol=atol, rtol=rtol, max_iter=max_iter, give_up=give_up)
    seq = fz if on_failure == "sequential" else None
    if method in ("deer", "quasi_deer"):
      z, st = newton_solve(lin, p, z0_, xs_, zinit, length=t, chunk=chunk, mode=mode,
                           clip=clip, fallback=seq, axis=seq_axis, **common)
      lam = jnp.zeros((), real_dtype(z0_.dtype))
    else:
      z, st = elk_solve(lin, p, z0_, xs_, zinit, lam_init=lam_init,
                        adaptive=adaptive_lambda, smooth=elk_step == "smoother", clip=clip,
                        **common)
      if seq is not None:
        z = sequential_fill(seq, st.converged, z[:, None], p, z0_, xs_, length=t)[:, 0]
      lam = st.lam
    return z, (st, lam)

  # Forward-mode derivatives (jax.jvp, jax.hessian) are those of the exact
  # solution, solved as a linear recurrence (implicit.py).
  if seq_axis is None:
    core = exact_jvp(core, fz, lin, kind=kind, reverse=False, atol=atol, rtol=rtol, chunk=chunk)

  def forward(p, z0_, xs_):
    seq = on_failure == "sequential"
    z, (st, lam) = core(p, z0_, xs_)
    fallback = ~st.converged if seq else jnp.bool_(False)
    if on_failure == "raise":
      jax.debug.callback(functools.partial(_raise_on_failure, method=method),
                         st.converged, st.residual, st.iterations)
    info = SolveInfo(st.iterations, st.residual, st.converged, fallback, lam, st.resets, st.status)
    if seq_axis is not None:   # equal on every device; typed so (out_specs P())
      info = jax.tree_util.tree_map(lambda v: sharded.all_max(v, seq_axis), info)
    return z, info

  @jax.custom_vjp
  def run(p, z0_, xs_):
    return forward(p, z0_, xs_)

  def run_fwd(p, z0_, xs_):
    z, info = forward(p, z0_, xs_)
    return (z, info), (p, z0_, xs_, z)

  def run_bwd(res, cts):
    p, z0_, xs_, z = res
    g = cts[0]
    first = z0_ if seq_axis is None else sharded.boundary(z0_, z[-1], seq_axis, reverse=False)
    zprev = jnp.concatenate([first[None], z[:-1]])
    if adjoint == "shoot":
      mu = adj.shoot_adjoint(fz, lin, p, zprev, xs_, g, kind=kind, atol=atol, rtol=rtol,
                             max_iter=max_iter and max(max_iter, 1), chunk=chunk,
                             give_up=give_up, axis=seq_axis)[0]
    elif adjoint == "dense":
      mu = adj.dense_adjoint(dense_lin, p, zprev, xs_, g)
    elif adjoint == "sequential":
      mu = adj.sequential_adjoint(fz, p, zprev, xs_, g, axis=seq_axis)
    elif adjoint == "approx":
      mu = adj.approx_adjoint(diag_lin, p, zprev, xs_, g)
    else:
      mu, _, ok = adj.quasi_adjoint(fz, diag_lin, p, zprev, xs_, g, atol=atol, rtol=rtol,
                                    max_iter=max(max_iter or t, 1))
      mu = adj.sequential_adjoint_fill(fz, ok, mu, p, zprev, xs_, g)
    return adj.input_gradients(fz, p, z0_, zprev, xs_, mu, axis=seq_axis)

  run.defvjp(run_fwd, run_bwd)
  z, info = run(all_params, z0, xs)
  # Diagnostics carry no derivatives (integer/bool outputs of the custom VJP).
  info = jax.tree_util.tree_map(lax.stop_gradient, info)
  return unravel_traj(z), info
