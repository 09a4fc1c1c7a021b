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
from seqtrain.solvers.newton import newton_solve
from seqtrain.solvers.schedule import after
from seqtrain.solvers.spec import AUTO, INITS, SolverSpec, canonical_method
from seqtrain.solvers.stopping import real_dtype

# Shortest sequence at which the parallel method beats lax.scan, per platform
# (None: never).  Measured tables: README "Choosing a method" and
# benchmarks/results/; gpu_suite.sh re-measures the GPU rows.
CROSSOVER = {"cpu": None, "gpu": 256, "cuda": 256, "rocm": 256, "tpu": 256}
PARALLEL_DEFAULT = "quasi_deer"


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


def solve(step: Callable, params: Any, h0: Any, xs: Any, method: str | None = None, *,
          spec: SolverSpec | None = None, length: int | None = None, init: Any = "zeros",
          diag_jacobian: Callable | None = None, **options):
  """Evaluates h_t = step(params, h_{t-1}, x_t), t = 1..T, in parallel over T.

  Args:
    step: pure function (params, h, x) -> h_next; h may be any pytree of arrays
      (e.g. an LSTM's (c, h)).  Everything traced that it uses should come in
      through ``params`` (closed-over arrays are hoisted and differentiated too).
    params: pytree of parameters (differentiable).
    h0: initial state pytree (differentiable).
    xs: pytree of inputs with leading time axis T (differentiable), or None
      with ``length``.
    method: shorthand for ``spec.method`` (default "auto": ``resolve_method``).
    spec: a ``SolverSpec`` (default ``SolverSpec()``); ``options`` are its
      fields (``atol``, ``max_iter``, ``mode``, ``adjoint``, ``seq_axis`` ...),
      overriding the spec's: ``solve(..., "deer", max_iter=8)``.  Every option
      and its meaning: ``SolverSpec``.
    init: "zeros", "warm" (h_t = f(h0, x_t), computed in parallel) or a
      trajectory pytree shaped like the output.
    diag_jacobian: optional analytic hook (params, h, x) -> (h_next, diag(df/dh))
      used by the quasi methods instead of the JVP fallback.

  With ``seq_axis`` (sequence parallelism) call ``solve`` inside
  ``jax.shard_map`` with xs sharded along time over that mesh axis (P devices,
  device p holding steps [p T/P, (p+1) T/P)); xs / init / the result are this
  device's block, h0 the state before the whole sequence.  Methods
  "sequential" (the carry passed device to device), "deer" and "quasi_deer"
  (mode "shoot": local chunks, the chunk-start scan and the stopping test
  across devices; docs/method.md section 8); adjoints "shoot" and
  "sequential".  ``info`` is identical on every device.  Replicated params /
  h0 are cast to device-varying (their gradients are summed over the axis).
  First derivatives only (no exact rule for jax.hessian).

  The function reads as: validate (``SolverSpec``, shapes) -> forward
  (``_FORWARD[method]``) -> backward (``_ADJOINT[adjoint]``) in one custom VJP.

  Returns:
    (hs, info): hs has the structure of h0 with a leading axis T (states 1..T);
    info is a ``SolveInfo``.
  """
  unknown = sorted(set(options) - set(SolverSpec.field_names()))
  if unknown:
    raise TypeError(f"solve() got unknown option(s) {', '.join(unknown)}; the options are "
                    f"SolverSpec's fields: {', '.join(SolverSpec.field_names())}")
  spec = (spec or SolverSpec()).replace(**options, **({} if method is None else
                                                      {"method": method}))
  seq_axis = spec.seq_axis
  t = _sequence_length(xs, length)
  devices = 1 if seq_axis is None else sharded.axis_size(seq_axis)
  method = resolve_method(spec.method, t * devices, devices=devices)
  # Inside shard_map (with its varying-axes checks): one varying type for all inputs
  # (a batch shard's: data, and seq), so that loop carries started from h0 type-check
  # against the values they take. Outside shard_map there is nothing to cast.
  axes = sharded.tree_varying_axes((params, h0, xs)) | ({seq_axis} if seq_axis else set())
  if axes:
    params, h0, xs = sharded.varying((params, h0, xs), axes)
  z0, unravel = ravel_pytree(h0)
  if not jnp.issubdtype(z0.dtype, jnp.inexact):
    raise TypeError(f"the state must be floating point or complex, got {z0.dtype}")
  d_atol, d_rtol = default_tolerances(z0.dtype)
  atol = d_atol if spec.atol is None else spec.atol
  rtol = d_rtol if spec.rtol is None else spec.rtol
  quasi = method in ("quasi_deer", "quasi_elk")
  kind = "diag" if quasi else "dense"
  mode = spec.mode or "shoot"
  adjoint = spec.adjoint or "shoot"
  on_failure = spec.on_failure

  def unravel_traj(z):
    return jax.vmap(unravel)(z)

  if method == "sequential":
    def body(h, x):
      # The state keeps its dtype (as the parallel methods keep it): a float32
      # carry stays float32 under float64 inputs or parameters.
      h = jax.tree_util.tree_map(lambda new, old: new.astype(old.dtype), step(params, h, x), h)
      return h, h

    def run_block(start):
      end, hs = lax.scan(body, start, xs, length=t, unroll=spec.unroll)
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
    diag_lin = jvp_diag_linearization(fz, spec.jvp_batch)
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

  problem = _Problem(fz, lin, dense_lin, diag_lin, kind, atol, rtol, t, mode, spec)

  def core(p, z0_, xs_):
    """The parallel solve: (trajectory, (solver stats, final damping))."""
    if isinstance(init, str) and init == "zeros":
      zinit = jnp.zeros((t,) + z0_.shape, z0_.dtype)
    elif isinstance(init, str):
      zinit = jax.vmap(fz, in_axes=(None, None, 0))(p, z0_, xs_)
    else:
      zinit = z_init_given.astype(z0_.dtype)
    # A constant start (zeros) would be materialised whenever XLA likes, and a
    # recomputed forward pass (model.recompute) then holds one per layer.
    zinit = after(zinit, xs_, vary=True)
    z, st, lam = _FORWARD[method](problem, p, z0_, xs_, zinit)
    return z, (st, lam)

  # Forward-mode derivatives (jax.jvp, jax.hessian) are those of the exact
  # solution, solved as a linear recurrence (implicit.py).
  if seq_axis is None:
    core = exact_jvp(core, fz, lin, kind=kind, reverse=False, atol=atol, rtol=rtol,
                     chunk=spec.chunk)

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
    g = cts[0]
    # The adjoint's linearisations need only the saved values: computed from
    # the cotangent's arrival, one layer's at a time are live (schedule.py).
    p, z0_, xs_, z = after(res, g)
    first = z0_ if seq_axis is None else sharded.boundary(z0_, z[-1], seq_axis, reverse=False)
    zprev = jnp.concatenate([first[None], z[:-1]])
    mu = _ADJOINT[adjoint](problem, p, zprev, xs_, g)
    return adj.input_gradients(fz, p, z0_, zprev, xs_, mu, axis=seq_axis)

  run.defvjp(run_fwd, run_bwd)
  z, info = run(all_params, z0, xs)
  # Diagnostics carry no derivatives (integer/bool outputs of the custom VJP).
  info = jax.tree_util.tree_map(lax.stop_gradient, info)
  return unravel_traj(z), info


class _Problem(NamedTuple):
  """What the forward and adjoint rules read: the flat step, its linearisations
  and the resolved options."""
  fz: Callable          # (params, z, x) -> z_next on flat states
  lin: Callable         # the method's linearisation (dense or diagonal)
  dense_lin: Callable
  diag_lin: Callable
  kind: str             # "dense" | "diag"
  atol: float
  rtol: float
  length: int
  mode: str
  spec: SolverSpec

  def common(self) -> dict:
    return dict(kind=self.kind, atol=self.atol, rtol=self.rtol, max_iter=self.spec.max_iter,
                give_up=self.spec.give_up)

  def fallback(self):
    return self.fz if self.spec.on_failure == "sequential" else None


def _newton_forward(pr: _Problem, p, z0, xs, zinit):
  """DEER / quasi-DEER (newton.py; docs/method.md sections 1-2)."""
  z, st = newton_solve(pr.lin, p, z0, xs, zinit, length=pr.length, chunk=pr.spec.chunk,
                       mode=pr.mode, clip=pr.spec.clip, fallback=pr.fallback(),
                       axis=pr.spec.seq_axis, **pr.common())
  return z, st, jnp.zeros((), real_dtype(z0.dtype))


def _elk_forward(pr: _Problem, p, z0, xs, zinit):
  """ELK / quasi-ELK (elk.py; docs/method.md section 3), then the sequential fill."""
  z, st = elk_solve(pr.lin, p, z0, xs, zinit, lam_init=pr.spec.lam_init,
                    adaptive=pr.spec.adaptive_lambda, smooth=pr.spec.elk_step == "smoother",
                    clip=pr.spec.clip, **pr.common())
  if pr.fallback() is not None:
    z = sequential_fill(pr.fz, st.converged, z[:, None], p, z0, xs, length=pr.length)[:, 0]
  return z, st, st.lam


# method -> (problem, params, z0, xs, initial trajectory) -> (z, stats, lam)
_FORWARD = {"deer": _newton_forward, "quasi_deer": _newton_forward,
            "elk": _elk_forward, "quasi_elk": _elk_forward}


def _shoot_adjoint(pr: _Problem, p, zprev, xs, g):
  max_iter = pr.spec.max_iter
  return adj.shoot_adjoint(pr.fz, pr.lin, p, zprev, xs, g, kind=pr.kind, atol=pr.atol,
                           rtol=pr.rtol, max_iter=max_iter and max(max_iter, 1),
                           chunk=pr.spec.chunk, give_up=pr.spec.give_up,
                           axis=pr.spec.seq_axis)[0]


def _quasi_adjoint(pr: _Problem, p, zprev, xs, g):
  mu, _, ok = adj.quasi_adjoint(pr.fz, pr.diag_lin, p, zprev, xs, g, atol=pr.atol,
                                rtol=pr.rtol, max_iter=max(pr.spec.max_iter or pr.length, 1))
  return adj.sequential_adjoint_fill(pr.fz, ok, mu, p, zprev, xs, g)


# adjoint -> (problem, params, z_{t-1}, xs, dL/dz_t) -> mu (docs/method.md section 4)
_ADJOINT = {
    "shoot": _shoot_adjoint,
    "dense": lambda pr, p, zprev, xs, g: adj.dense_adjoint(pr.dense_lin, p, zprev, xs, g),
    "sequential": lambda pr, p, zprev, xs, g: adj.sequential_adjoint(
        pr.fz, p, zprev, xs, g, axis=pr.spec.seq_axis),
    "approx": lambda pr, p, zprev, xs, g: adj.approx_adjoint(pr.diag_lin, p, zprev, xs, g),
    "quasi": _quasi_adjoint,
}
