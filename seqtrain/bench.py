"""Benchmarks of the parallel-in-time solvers, and ``seqtrain bench``.

Three benchmarks, each a function returning plain rows (dicts) plus writers for
JSON / markdown / PNG reports. The scripts in the repository's ``benchmarks/``
folder are thin command lines over them (this module is what gets installed).

* ``run_grid``: one ``ParallelRNN`` layer, as users run it
  (``ParallelRNN(nn.GRUCell(D), method=m)`` on x of shape (B, T, D), float32,
  parameters from ``nn.RNN``'s init), over a grid of T, D, batch, cell and
  method. Forward and forward+gradient (loss = mean(y^2), gradients with
  respect to parameters and inputs) are timed after compilation (compile and
  first call reported separately; ``jax.block_until_ready`` on the output;
  median of repeats). Each row holds the compiled program's scratch memory
  (``memory_analysis().temp_size_in_bytes``), the device's peak memory where
  the backend reports it, the solver iterations (``solver_stats``), the error
  against ``method="sequential"`` (``jax.lax.scan``) and the time ratio to it.
  Baselines in the same run: ``sequential``, ``flax_rnn`` (``nn.RNN``) and
  ``cudnn`` (``torch.nn.GRU``/``LSTM`` on CUDA, when PyTorch sees a GPU).
* ``run_training``: steps/s of the papers' 5-layer GRU-32 EigenWorms classifier
  (T=17,984, batch 4, exact gradients, full optimizer step) per method.
* ``run_stability``: the chaotic-system experiment (Lorenz-96 and an expansive
  tanh RNN, float64): iterations, wall-clock and error per method, adaptive
  versus fixed lambda for the damped methods.

``run_check`` is a quick correctness gate (every method against sequential at
a small size, forward and gradient). Nothing here imports JAX at module level,
so adding the CLI command costs nothing.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

__all__ = [
    "SOLVER_METHODS", "PERSTEP_VARIANTS", "BASELINES", "GRID_METHODS", "environment_info",
    "device_slug",
    "default_out_dir", "compiled_memory", "time_calls", "run_grid", "run_check", "run_training",
    "run_stability", "write_json", "write_grid_report", "write_training_report",
    "write_stability_report", "write_check_report", "plot_grid", "summarize",
    "add_bench_command", "add_grid_arguments", "run_bench", "main_solvers", "main_training",
    "main_stability", "main_report",
]

SOLVER_METHODS = ("sequential", "deer", "quasi_deer", "elk", "quasi_elk")
# The papers' per-step Newton (and its adjoints) next to the default chunk-start
# ("shoot") form: name -> (solver method, solver options).
PERSTEP_VARIANTS = {
    "quasi_deer_perstep": ("quasi_deer", {"mode": "store", "adjoint": "quasi"}),
    "deer_perstep": ("deer", {"mode": "recompute", "adjoint": "dense"}),
}
BASELINES = ("flax_rnn", "cudnn")
GRID_METHODS = SOLVER_METHODS + tuple(PERSTEP_VARIANTS) + BASELINES
_METHOD_ALIASES = {"ike": "elk", "quasi_ike": "quasi_elk", "scan": "sequential",
                   "nn.rnn": "flax_rnn", "flax": "flax_rnn", "torch": "cudnn"}
DEFAULT_GRID_METHODS = ("sequential", "quasi_deer", "quasi_deer_perstep", "deer", "deer_perstep",
                        "quasi_elk", "elk", "flax_rnn", "cudnn")
TRAIN_METHODS = ("sequential", "quasi_deer", "deer", "quasi_elk", "elk")
CELLS = ("gru", "lstm")
Log = Callable[[str], None]


def _say(msg: str) -> None:
  print(msg, flush=True)


# --------------------------------------------------------------------------------------------
# Environment
# --------------------------------------------------------------------------------------------

def _version(module: str) -> str | None:
  try:
    from importlib import metadata
    return metadata.version(module)
  except Exception:  # pragma: no cover - not installed
    return None


def _git_commit() -> str | None:
  here = Path(__file__).resolve().parent.parent
  try:
    out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                         timeout=5)
    return (out.stdout.strip() or None) if out.returncode == 0 else None
  except Exception:
    return None


def environment_info(argv: Sequence[str] | None = None) -> dict:
  """Machine, library versions, device, command line and date of a benchmark run."""
  import jax
  dev = jax.devices()[0]
  info = {
      "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
      "command": " ".join([Path(sys.argv[0]).name] + list(sys.argv[1:] if argv is None
                                                          else argv)),
      "host": platform.node(),
      "machine": platform.machine(),
      "platform": platform.platform(),
      "cpu_count": os.cpu_count(),
      "python": platform.python_version(),
      "jax": jax.__version__,
      "jaxlib": _version("jaxlib"),
      "flax": _version("flax"),
      "optax": _version("optax"),
      "numpy": np.__version__,
      "torch": _version("torch"),
      "seqtrain_commit": _git_commit(),
      "backend": jax.default_backend(),
      "device_kind": dev.device_kind,
      "device_count": jax.device_count(),
      "x64": bool(jax.config.read("jax_enable_x64")),
      "env": {k: v for k, v in os.environ.items()
              if k.startswith(("XLA_", "JAX_", "CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE"))},
  }
  limit = device_memory_limit()
  if limit is not None:
    info["device_memory_bytes"] = limit
  return info


def device_slug() -> str:
  """'nvidia-h200', 'cpu', ...: the first device's kind as a file-name part."""
  import jax
  kind = jax.devices()[0].device_kind or jax.default_backend()
  return re.sub(r"[^a-z0-9]+", "-", kind.lower()).strip("-") or "device"


def default_out_dir(root: str | Path = "benchmarks/results") -> Path:
  """``<root>/<UTC date-time>-<device>``."""
  stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
  return Path(root) / f"{stamp}-{device_slug()}"


# --------------------------------------------------------------------------------------------
# Timing and memory
# --------------------------------------------------------------------------------------------

def compiled_memory(compiled) -> dict:
  """Scratch / argument / output bytes of a compiled program (None where unreported)."""
  out = {"temp_bytes": None, "argument_bytes": None, "output_bytes": None}
  try:
    m = compiled.memory_analysis()
  except Exception:
    return out
  if m is None:
    return out
  for key, attr in (("temp_bytes", "temp_size_in_bytes"),
                    ("argument_bytes", "argument_size_in_bytes"),
                    ("output_bytes", "output_size_in_bytes")):
    v = getattr(m, attr, None)
    out[key] = int(v) if v is not None else None
  return out


def device_peak_bytes() -> int | None:
  """The device's peak bytes in use so far in this process (GPU/TPU; None on CPU)."""
  import jax
  try:
    stats = jax.devices()[0].memory_stats()
  except Exception:
    return None
  return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None


def device_memory_limit() -> int | None:
  """Bytes JAX may use on the first device (None where the backend does not say)."""
  import jax
  try:
    stats = jax.devices()[0].memory_stats()
  except Exception:
    return None
  return int(stats["bytes_limit"]) if stats and "bytes_limit" in stats else None


def default_memory_budget() -> int:
  """90% of the device's memory limit, or half the host's RAM on CPU."""
  limit = device_memory_limit()
  if limit:
    return int(0.9 * limit)
  try:
    return int(0.5 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
  except (ValueError, OSError, AttributeError):  # pragma: no cover
    return 8 << 30


def time_calls(fn: Callable[[], Any], *, repeats: int, time_limit: float | None,
               sync: Callable[[Any], Any] | None = None) -> tuple[dict, Any]:
  """Times ``fn()`` after one warm-up call.

  The warm-up call is timed and reported separately (``warmup_s``). Then at
  least one and at most ``repeats`` timed calls, fewer when the warm-up shows
  that ``repeats`` calls would take longer than ``time_limit`` seconds.
  ``sync(out)`` waits for the result (default ``jax.block_until_ready``).

  Returns (timing dict, the warm-up call's output).
  """
  if sync is None:
    import jax
    sync = jax.block_until_ready
  t0 = time.perf_counter()
  out = fn()
  sync(out)
  warm = time.perf_counter() - t0
  n = max(1, int(repeats))
  if time_limit is not None and warm * n > time_limit:
    n = max(1, min(n, int(time_limit // max(warm, 1e-9))))
  times = []
  for _ in range(n):
    t0 = time.perf_counter()
    o = fn()
    sync(o)
    times.append(time.perf_counter() - t0)
    del o
  return {"warmup_s": warm, "time_s": float(np.median(times)), "time_min_s": float(min(times)),
          "times_s": times, "repeats": n}, out


class _Skip(Exception):
  """A configuration skipped on purpose (reason in the message)."""


def _gb(n: float) -> str:
  return f"{n / 1e9:.2f} GB"


def _short_error(e: BaseException, limit: int = 300) -> str:
  text = str(e).strip().splitlines()
  first = next((line for line in text if line.strip()), "")
  msg = f"{type(e).__name__}: {first}"
  return msg if len(msg) <= limit else msg[:limit - 3] + "..."


# --------------------------------------------------------------------------------------------
# The layer grid
# --------------------------------------------------------------------------------------------

def canonical_grid_method(name: str) -> str:
  key = name.strip().lower()
  key = _METHOD_ALIASES.get(key, key)
  if key not in GRID_METHODS:
    raise ValueError(f"unknown method {name!r}; valid: {', '.join(GRID_METHODS)}")
  return key


def _torch_cuda():
  """(torch module, None) when PyTorch sees a CUDA GPU, else (None, reason)."""
  try:
    import torch
  except Exception as e:  # ImportError, or a broken install
    return None, f"torch not importable ({type(e).__name__})"
  try:
    if not torch.cuda.is_available():
      return None, "torch.cuda.is_available() is False"
  except Exception as e:  # pragma: no cover
    return None, _short_error(e)
  return torch, None


def _cell_module(cell: str, d: int):
  from flax import linen as nn
  if cell == "gru":
    return nn.GRUCell(d)
  if cell == "lstm":
    return nn.LSTMCell(d)
  raise ValueError(f"unknown cell {cell!r}; valid: {', '.join(CELLS)}")


def _solver_stats(stats) -> dict:
  """iterations / converged / fallbacks / residual from a ``solver_stats`` collection."""
  from flax import traverse_util
  from flax.core import unfreeze
  out = {"iterations": None, "converged": None, "fallbacks": None, "residual": None}
  if not stats:
    return out
  flat = traverse_util.flatten_dict(unfreeze(stats))
  vals: dict[str, list] = {}
  for k, v in flat.items():
    for leaf in (v if isinstance(v, tuple) else (v,)):
      vals.setdefault(k[-1], []).append(np.asarray(leaf))
  if "iterations" in vals:
    out["iterations"] = int(max(np.max(v) for v in vals["iterations"]))
  if "converged" in vals:
    out["converged"] = bool(all(np.all(v) for v in vals["converged"]))
  if "fallbacks" in vals:
    out["fallbacks"] = int(sum(np.sum(v) for v in vals["fallbacks"]))
  if "residual" in vals:
    out["residual"] = float(max(np.max(v) for v in vals["residual"]))
  return out


def _max_abs_diff(a, b) -> float:
  import jax.numpy as jnp
  return float(jnp.max(jnp.abs(jnp.asarray(a, jnp.float32) - jnp.asarray(b, jnp.float32))))


def _rel_tree_error(g, ref) -> float:
  """max over leaves of max|g - ref| / max|ref|."""
  import jax
  import jax.numpy as jnp
  errs = []
  for a, b in zip(jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(ref)):
    scale = float(jnp.max(jnp.abs(b)))
    errs.append(_max_abs_diff(a, b) / max(scale, 1e-30))
  return float(max(errs)) if errs else 0.0


def solver_variant(method: str) -> tuple[str, dict]:
  """(solver method, extra solver options) of a benchmark method name."""
  base, options = PERSTEP_VARIANTS.get(method, (method, {}))
  return base, dict(options)


def _dense_bytes(method: str, pass_: str, b: int, t: int, d: int, itemsize: int = 4) -> int:
  """Lower bound on memory for methods holding a (T, D, D) Jacobian per sequence."""
  dense = method == "elk" or (pass_ == "grad" and method == "deer_perstep")
  return 2 * b * t * d * d * itemsize if dense else 0


def _jax_program(method: str, cell: str, d: int, pass_: str, solver_options: dict):
  """(params, x) -> output, for the forward or the forward+gradient pass."""
  import jax
  import jax.numpy as jnp
  from flax import linen as nn

  from seqtrain.nn import ParallelRNN
  if method == "flax_rnn":
    layer = nn.RNN(_cell_module(cell, d))

    def fwd(p, x):
      return layer.apply(p, x), {}
  else:
    base, extra = solver_variant(method)
    layer = ParallelRNN(_cell_module(cell, d), method=base,
                        solver_options={**solver_options, **extra})

    def fwd(p, x):
      ys, mut = layer.apply(p, x, mutable=["solver_stats"])
      return ys, mut.get("solver_stats", {})

  if pass_ == "forward":
    return fwd

  def loss(p, x):
    ys, st = fwd(p, x)
    return jnp.mean(jnp.square(ys)), st

  return jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)


def _run_jax_row(method, cell, d, pass_, params, x, *, repeats, time_limit, budget,
                 solver_options) -> tuple[dict, Any, Any]:
  """Compiles and times one configuration. Returns (fields, output, stats)."""
  import jax
  f = _jax_program(method, cell, d, pass_, solver_options)
  t0 = time.perf_counter()
  compiled = jax.jit(f).lower(params, x).compile()
  fields: dict[str, Any] = {"compile_s": time.perf_counter() - t0}
  fields.update(compiled_memory(compiled))
  need = sum(fields[k] or 0 for k in ("temp_bytes", "argument_bytes", "output_bytes"))
  if need > budget:
    raise _Skip(f"compiled program needs {_gb(need)} > memory budget {_gb(budget)}")
  timing, out = time_calls(lambda: compiled(params, x), repeats=repeats, time_limit=time_limit)
  fields.update(timing)
  fields["peak_bytes"] = device_peak_bytes()
  if pass_ == "forward":
    ys, stats = out
    return fields, ys, stats
  (_, stats), grads = out
  return fields, grads, stats


def torch_rnn_from_flax(torch, cell: str, params, d: int, device: str):
  """A ``torch.nn.GRU``/``LSTM`` (batch_first) computing the same function as the flax
  cell with ``params`` (flax kernels are (in, out); torch weights (out, in), gates
  stacked r,z,n for the GRU and i,f,g,o for the LSTM)."""
  p = {k: {kk: np.asarray(vv, np.float32) for kk, vv in v.items()}
       for k, v in params["params"]["cell"].items()}
  zeros = np.zeros(d, np.float32)
  if cell == "gru":
    mod = torch.nn.GRU(d, d, batch_first=True)
    w_ih = np.concatenate([p[g]["kernel"].T for g in ("ir", "iz", "in")])
    w_hh = np.concatenate([p[g]["kernel"].T for g in ("hr", "hz", "hn")])
    b_ih = np.concatenate([p[g]["bias"] for g in ("ir", "iz", "in")])
    b_hh = np.concatenate([zeros, zeros, p["hn"]["bias"]])
  elif cell == "lstm":
    mod = torch.nn.LSTM(d, d, batch_first=True)
    w_ih = np.concatenate([p[g]["kernel"].T for g in ("ii", "if", "ig", "io")])
    w_hh = np.concatenate([p[g]["kernel"].T for g in ("hi", "hf", "hg", "ho")])
    b_ih = np.zeros(4 * d, np.float32)
    b_hh = np.concatenate([p[g]["bias"] for g in ("hi", "hf", "hg", "ho")])
  else:
    raise ValueError(f"no torch counterpart for cell {cell!r}")
  with torch.no_grad():
    for name, value in (("weight_ih_l0", w_ih), ("weight_hh_l0", w_hh), ("bias_ih_l0", b_ih),
                        ("bias_hh_l0", b_hh)):
      getattr(mod, name).copy_(torch.from_numpy(np.ascontiguousarray(value, np.float32)))
  return mod.to(device=device, dtype=torch.float32)


def _to_torch(torch, a, device):
  try:
    return torch.from_dlpack(a).to(device)
  except Exception:
    return torch.from_numpy(np.asarray(a, np.float32)).to(device)


def _run_torch_row(torch, cell, d, pass_, params, x, ref, *, repeats, time_limit):
  """cuDNN through PyTorch, float32 without TF32. Returns (fields, error)."""
  dev = "cuda"
  torch.backends.cudnn.allow_tf32 = False
  torch.backends.cuda.matmul.allow_tf32 = False
  mod = torch_rnn_from_flax(torch, cell, params, d, dev)
  xt = _to_torch(torch, x, dev).contiguous()
  sync = lambda _: torch.cuda.synchronize()
  torch.cuda.synchronize()
  torch.cuda.reset_peak_memory_stats()
  if pass_ == "forward":
    def call():
      with torch.no_grad():
        return mod(xt)[0]
  else:
    xg = xt.clone().requires_grad_(True)

    def call():
      mod.zero_grad(set_to_none=True)
      xg.grad = None
      y = mod(xg)[0]
      torch.mean(torch.square(y)).backward()
      return xg.grad
  timing, out = time_calls(call, repeats=repeats, time_limit=time_limit, sync=sync)
  fields = dict(timing, compile_s=None, temp_bytes=None, argument_bytes=None, output_bytes=None,
                peak_bytes=int(torch.cuda.max_memory_allocated()), tf32=False)
  with torch.no_grad():
    if pass_ == "forward":
      err = float(torch.max(torch.abs(out - _to_torch(torch, ref, dev))))
    else:  # input gradient only: the parameter layouts differ
      r = _to_torch(torch, ref[1], dev)
      err = float(torch.max(torch.abs(out - r)) / torch.clamp(torch.max(torch.abs(r)), min=1e-30))
  del out, xt, mod
  torch.cuda.empty_cache()
  return fields, err


_GRID_FIELDS = ("compile_s", "warmup_s", "time_s", "time_min_s", "times_s", "repeats", "ratio",
                "temp_bytes", "argument_bytes", "output_bytes", "peak_bytes", "iterations",
                "converged", "fallbacks", "residual", "max_error", "grad_rel_error")


def run_grid(*, T: Sequence[int], D: Sequence[int], batch: Sequence[int] | int = 16,
             cells: Sequence[str] = ("gru",), methods: Sequence[str] = DEFAULT_GRID_METHODS,
             forward: bool = True, grad: bool = False, grad_max_T: int | None = None,
             repeats: int = 5, time_limit: float | None = 10.0, max_call_s: float | None = 60.0,
             deadline_s: float | None = None, memory_budget: int | None = None,
             max_iter: int | None = None, chunk: int | None = None, seed: int = 0,
             log: Log = _say) -> list[dict]:
  """Times one recurrent layer over the grid; returns one row per configuration.

  Passes run in order: every forward row, then every gradient row (so a
  deadline cuts gradient rows at large T first). Within a (pass, cell, D, T,
  batch) group ``sequential`` runs first: it is the reference for errors and
  ratios and is always run (never skipped by the time estimate). A row is
  skipped, with its reason, when: the deadline has passed; its method keeps
  dense (T, D, D) Jacobians that cannot fit the memory budget, or its compiled
  program does not fit; the same method at a smaller T was skipped for size or
  time; or its time per call, extrapolated linearly in T from the same method
  at the previous T, exceeds ``max_call_s``. Errors during a row are recorded
  (status "failed") and the grid goes on.

  Row fields: pass, cell, T, D, batch, method, status, reason, compile_s,
  warmup_s, time_s (median), time_min_s, times_s, repeats, ratio (time_s /
  sequential's time_s in the same group), temp_bytes / argument_bytes /
  output_bytes (compiled program), peak_bytes (device peak so far in the
  process, or torch's peak for cudnn rows), iterations, converged, fallbacks,
  residual (from ``solver_stats``; sequential reports 0 iterations),
  max_error (forward: max |y - y_sequential|), grad_rel_error (gradient pass:
  max over parameter and input gradients of max|g - g_seq| / max|g_seq|; input
  gradient only for cudnn).
  """
  import jax
  import jax.numpy as jnp
  from flax import linen as nn

  methods = [canonical_grid_method(m) for m in methods]
  methods = ["sequential"] + [m for m in dict.fromkeys(methods) if m != "sequential"]
  for c in cells:
    if c not in CELLS:
      raise ValueError(f"unknown cell {c!r}; valid: {', '.join(CELLS)}")
  batches = [batch] if isinstance(batch, int) else list(batch)
  budget = int(memory_budget) if memory_budget else default_memory_budget()
  solver_options = {} if max_iter is None else {"max_iter": int(max_iter)}
  if chunk:
    solver_options["chunk"] = int(chunk)
  torch, torch_reason = _torch_cuda() if "cudnn" in methods else (None, None)
  passes = (["forward"] if forward else []) + (["grad"] if grad else [])
  start = time.perf_counter()
  last: dict[tuple, tuple[int, float]] = {}      # (pass, cell, D, B, method) -> (T, s/call)
  blocked: dict[tuple, str] = {}                 # same key -> why larger T is skipped
  rows: list[dict] = []

  for pass_ in passes:
    for cell in cells:
      for d in D:
        for b in batches:
          for t in sorted(T):
            group: list[dict] = []
            x = params = ref = None
            for method in methods:
              key = (pass_, cell, d, b, method)
              row: dict[str, Any] = {"pass": pass_, "cell": cell, "T": int(t), "D": int(d),
                                     "batch": int(b), "method": method, "status": "ok",
                                     "reason": None}
              row.update(dict.fromkeys(_GRID_FIELDS))
              reason = None
              if deadline_s is not None and time.perf_counter() - start > deadline_s:
                reason = f"deadline (--deadline-s {deadline_s:g}) reached"
              elif pass_ == "grad" and grad_max_T is not None and t > grad_max_T:
                reason = f"gradient pass limited to T <= {grad_max_T} (--grad-max-T)"
              elif method != "sequential" and ref is None:
                reason = "no sequential reference in this group"
              elif method == "cudnn" and torch is None:
                reason = torch_reason
              elif key in blocked:
                reason = blocked[key]
              elif _dense_bytes(method, pass_, b, t, d) > budget:
                reason = (f"dense (T, D, D) Jacobians need >= "
                          f"{_gb(_dense_bytes(method, pass_, b, t, d))} > memory budget "
                          f"{_gb(budget)}")
                blocked[key] = f"a smaller T was skipped: {reason}"
              elif method != "sequential" and max_call_s is not None and key in last:
                t_prev, s_prev = last[key]
                est = s_prev * t / t_prev
                if est > max_call_s:
                  reason = (f"estimated {est:.1f} s per call (from {s_prev:.2f} s at T={t_prev})"
                            f" > --max-call-s {max_call_s:g}")
                  blocked[key] = f"a smaller T was skipped: {reason}"
              if reason is not None:
                row.update(status="skipped", reason=reason)
                group.append(row)
                log(_row_line(row))
                continue
              if x is None:
                k = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), t), d)
                kx, kp = jax.random.split(k)
                x = jax.random.normal(kx, (b, t, d), jnp.float32)
                params = nn.RNN(_cell_module(cell, d)).init(kp, x[:, :1])
              try:
                if method == "cudnn":
                  fields, err = _run_torch_row(torch, cell, d, pass_, params, x, ref,
                                               repeats=repeats, time_limit=time_limit)
                  row.update(fields)
                  row["max_error" if pass_ == "forward" else "grad_rel_error"] = err
                else:
                  fields, out, stats = _run_jax_row(method, cell, d, pass_, params, x,
                                                    repeats=repeats, time_limit=time_limit,
                                                    budget=budget, solver_options=solver_options)
                  row.update(fields)
                  if method != "flax_rnn":
                    row.update(_solver_stats(stats))
                  if method == "sequential":
                    ref = out
                    row["iterations"] = 0
                  if pass_ == "forward":
                    row["max_error"] = 0.0 if method == "sequential" else _max_abs_diff(out, ref)
                  else:
                    row["grad_rel_error"] = (0.0 if method == "sequential"
                                             else _rel_tree_error(out, ref))
                  del out
                last[key] = (t, row["time_s"])
              except _Skip as e:
                row.update(status="skipped", reason=str(e))
                blocked[key] = f"a smaller T was skipped: {e}"
              except Exception as e:  # a failing configuration must not stop the grid
                row.update(status="failed", reason=_short_error(e))
                blocked[key] = f"a smaller T failed: {row['reason']}"
                if method == "sequential":
                  ref = None
              if ref is not None and row["status"] == "ok" and group and \
                  group[0]["status"] == "ok":
                row["ratio"] = row["time_s"] / group[0]["time_s"]
              elif method == "sequential" and row["status"] == "ok":
                row["ratio"] = row["time_s"] / row["time_s"]
              group.append(row)
              log(_row_line(row))
            rows.extend(group)
            del x, params, ref
  return rows


def _fmt_ms(s) -> str:
  if s is None:
    return "-"
  ms = 1e3 * s
  return f"{ms:.3g}" if ms < 100 else f"{ms:.0f}"


def _fmt(v, spec: str) -> str:
  return "-" if v is None else format(v, spec)


def _row_line(r: dict) -> str:
  head = (f"{r['pass']:<7} {r['cell']:<4} D={r['D']:<3} T={r['T']:<8} B={r['batch']:<3} "
          f"{r['method']:<18}")
  if r["status"] != "ok":
    return f"{head} {r['status']}: {r['reason']}"
  err = r.get("max_error") if r["pass"] == "forward" else r.get("grad_rel_error")
  return (f"{head} {_fmt_ms(r.get('time_s')):>8} ms  x{_fmt(r.get('ratio'), '.3f'):<7} "
          f"it={_fmt(r.get('iterations'), 'd'):<4} err={_fmt(err, '.1e'):<8} "
          f"compile={_fmt(r.get('compile_s'), '.1f')}s n={r.get('repeats')}")


# --------------------------------------------------------------------------------------------
# Correctness check
# --------------------------------------------------------------------------------------------

def run_check(*, T: int = 200, D: int = 8, batch: int = 3, cells: Sequence[str] = CELLS,
              methods: Sequence[str] = SOLVER_METHODS + tuple(PERSTEP_VARIANTS) + ("flax_rnn",),
              grad: bool = True,
              atol: float = 1e-4, grad_rtol: float = 1e-3,
              log: Log = _say) -> tuple[bool, list[dict]]:
  """Every method against sequential at a small size, float32.

  A row passes when it ran, its solver converged without the sequential
  fallback, its output is within ``atol`` of sequential's and (gradient pass)
  its gradients within ``grad_rtol`` relative. Returns (all passed, rows with
  a ``check`` field: "pass" or "FAIL: why").
  """
  rows = run_grid(T=[T], D=[D], batch=batch, cells=cells, methods=methods, grad=grad,
                  repeats=1, time_limit=None, max_call_s=None, log=lambda _: None)
  ok = True
  for r in rows:
    why = []
    if r["status"] != "ok":
      why.append(f"{r['status']}: {r['reason']}")
    else:
      if r["method"] not in BASELINES and r["method"] != "sequential":
        if not r.get("converged"):
          why.append("not converged")
        if r.get("fallbacks"):
          why.append(f"{r['fallbacks']} sequential fallbacks")
      err = r.get("max_error")
      if err is not None and not err <= atol:
        why.append(f"max error {err:.2e} > {atol:g}")
      gerr = r.get("grad_rel_error")
      if gerr is not None and not gerr <= grad_rtol:
        why.append(f"gradient error {gerr:.2e} > {grad_rtol:g}")
    r["check"] = "pass" if not why else "FAIL: " + "; ".join(why)
    ok &= not why
    err = r.get("max_error") if r["pass"] == "forward" else r.get("grad_rel_error")
    its = _fmt(r.get("iterations"), "d")
    log(f"check {r['pass']:<7} {r['cell']:<4} {r['method']:<18} it={its:<4} "
        f"err={_fmt(err, '.1e'):<8} {r['check']}")
  log(f"check: {'all passed' if ok else 'FAILED'} ({len(rows)} rows, T={T}, D={D}, "
      f"batch={batch}, float32)")
  return ok, rows


# --------------------------------------------------------------------------------------------
# Training steps/s
# --------------------------------------------------------------------------------------------

def run_training(*, T: int = 17_984, batch: int = 4, steps: int = 5,
                 methods: Sequence[str] = TRAIN_METHODS, depth: int = 5, width: int = 32,
                 channels: int = 6, num_classes: int = 5, cell: str = "gru", lr: float = 3e-5,
                 seed: int = 0, time_limit: float | None = 60.0,
                 deadline_s: float | None = None, log: Log = _say) -> list[dict]:
  """Steps/s of the papers' EigenWorms classifier per method, on random data.

  ``SequenceClassifier(num_classes, width, depth, cell, pooling="mean_logits",
  mlp_ratio=1)``; a full train step (``seqtrain.train.steps.make_train_step``
  on a one-device mesh: loss, exact gradients, global-norm clip 1.0, Adam).
  Every method starts from the same parameters. One warm-up step (timed
  separately, after compilation), then up to ``steps`` individually timed
  steps (fewer when they would exceed ``time_limit``). Rows: method, status,
  compile_s, warmup_s, step_s (median), steps_per_s, speedup (sequential's
  step_s / step_s), iterations (max over layers, last step), fallbacks,
  loss_first / loss_last, temp_bytes.
  """
  import flax
  import jax
  import jax.numpy as jnp
  import optax

  from seqtrain.models import SequenceClassifier
  from seqtrain.parallel.mesh import host_to_global, make_mesh, replicated
  from seqtrain.solvers import canonical_method
  from seqtrain.train.steps import TrainState, make_train_step

  methods = [m if m in PERSTEP_VARIANTS else canonical_method(m) for m in methods]
  mesh = make_mesh(("data",), (1,), devices=jax.devices()[:1])
  rng = np.random.default_rng(seed)
  data = host_to_global({
      "inputs": rng.standard_normal((batch, T, channels)).astype(np.float32),
      "lengths": np.full((batch,), T, np.int32),
      "labels": rng.integers(0, num_classes, batch).astype(np.int32),
      "mask": np.ones((batch,), np.float32)}, mesh)
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(lr))
  schedule = optax.constant_schedule(lr)

  def model_for(method):
    base, options = solver_variant(method)
    return SequenceClassifier(num_classes=num_classes, width=width, depth=depth, cell=cell,
                              method=base, solver_options=options, pooling="mean_logits",
                              mlp_ratio=1)

  t_init = min(T, 8)
  params = model_for("sequential").init(jax.random.PRNGKey(seed),
                                        jnp.zeros((1, t_init, channels), jnp.float32),
                                        jnp.full((1,), t_init, jnp.int32))["params"]
  params = flax.core.meta.unbox(params)
  state0 = jax.device_put(
      TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                 rng=jax.random.PRNGKey(seed + 1), bad_steps=jnp.zeros((), jnp.int32)),
      replicated(mesh))
  start = time.perf_counter()
  rows: list[dict] = []
  for method in methods:
    row: dict[str, Any] = {"method": method, "T": T, "batch": batch, "depth": depth,
                           "width": width, "cell": cell, "channels": channels, "status": "ok",
                           "reason": None}
    if deadline_s is not None and time.perf_counter() - start > deadline_s:
      row.update(status="skipped", reason=f"deadline (--deadline-s {deadline_s:g}) reached")
      rows.append(row)
      log(_train_line(row))
      continue
    try:
      step = jax.jit(make_train_step(model_for(method), tx, mesh, schedule))
      t0 = time.perf_counter()
      compiled = step.lower(state0, data).compile()
      row["compile_s"] = time.perf_counter() - t0
      row.update(compiled_memory(compiled))
      t0 = time.perf_counter()
      state, metrics = compiled(state0, data)
      jax.block_until_ready((state, metrics))
      row["warmup_s"] = warm = time.perf_counter() - t0
      row["loss_first"] = float(metrics["loss"])
      n = max(1, int(steps))
      if time_limit is not None and warm * n > time_limit:
        n = max(1, min(n, int(time_limit // max(warm, 1e-9))))
      times = []
      for _ in range(n):
        t0 = time.perf_counter()
        state, metrics = compiled(state, data)
        jax.block_until_ready((state, metrics))
        times.append(time.perf_counter() - t0)
      row.update(step_s=float(np.median(times)), times_s=times, steps=n,
                 steps_per_s=1.0 / float(np.median(times)), loss_last=float(metrics["loss"]),
                 skipped_updates=int(metrics["skipped"]), peak_bytes=device_peak_bytes())
      its = [int(v) for k, v in metrics.items() if k.endswith("iterations")]
      fbs = [int(v) for k, v in metrics.items() if k.endswith("fallbacks")]
      row["iterations"] = max(its) if its else None
      row["fallbacks"] = sum(fbs) if fbs else None
      del state, metrics
    except Exception as e:  # one failing method must not stop the others
      row.update(status="failed", reason=_short_error(e))
    rows.append(row)
    log(_train_line(row))
  seq = next((r for r in rows if r["method"] == "sequential" and r["status"] == "ok"), None)
  for r in rows:
    if seq is not None and r["status"] == "ok":
      r["speedup"] = seq["step_s"] / r["step_s"]
  return rows


def _train_line(r: dict) -> str:
  head = f"train {r['method']:<18} T={r['T']} B={r['batch']} depth={r['depth']}"
  if r["status"] != "ok":
    return f"{head} {r['status']}: {r['reason']}"
  return (f"{head} {_fmt_ms(r['step_s']):>8} ms/step  {r['steps_per_s']:.3g} steps/s  "
          f"it={_fmt(r.get('iterations'), 'd')} compile={r['compile_s']:.1f}s n={r['steps']}")


# --------------------------------------------------------------------------------------------
# Stability on chaotic / expansive systems
# --------------------------------------------------------------------------------------------

def lorenz96_step(dt: float = 0.01):
  """One RK4 step of Lorenz-96, dx_i/dt = (x_{i+1} - x_{i-2}) x_{i-1} - x_i + F
  (cyclic), as a ``solve`` step ``(params, h, x) -> h_next`` with
  ``params = {"forcing": F}``; ``x`` is ignored."""
  import jax.numpy as jnp

  def vf(f, h):
    return (jnp.roll(h, -1) - jnp.roll(h, 2)) * jnp.roll(h, 1) - h + f

  def step(params, h, x):
    f = params["forcing"]
    k1 = vf(f, h)
    k2 = vf(f, h + 0.5 * dt * k1)
    k3 = vf(f, h + 0.5 * dt * k2)
    k4 = vf(f, h + dt * k3)
    return h + (dt / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)

  return step


def lorenz96_problem(*, T: int, trials: int, D: int = 5, forcing: float = 8.0, dt: float = 0.01,
                     seed: int = 0, burn_in: int = 2000, spacing: int = 200):
  """Initial conditions on the attractor: from a seeded random state near the
  fixed point F, ``burn_in`` steps, then one state every ``spacing`` steps.
  Returns (step, params, h0s (trials, D), xs (trials, T, 1))."""
  import jax
  import jax.numpy as jnp
  from jax import lax
  step = lorenz96_step(dt)
  params = {"forcing": jnp.asarray(forcing, jnp.float64)}
  h = forcing + 0.01 * jax.random.normal(jax.random.key(seed), (D,), jnp.float64)

  def advance(h, n):
    return lax.fori_loop(0, n, lambda _, z: step(params, z, None), h)

  h = advance(h, burn_in)
  h0s = []
  for _ in range(trials):
    h0s.append(h)
    h = advance(h, spacing)
  xs = jnp.zeros((trials, T, 1), jnp.float64)
  return step, params, jnp.stack(h0s), xs


def expansive_rnn_problem(*, T: int, trials: int, D: int = 4, scale: float = 2.5,
                          input_scale: float = 0.5, seed: int = 0):
  """h_t = tanh(W h_{t-1} + x_t), W = ``scale`` x a random orthogonal matrix
  (every singular value ``scale`` > 1: expansive), x_t ~ N(0, input_scale^2),
  h_0 ~ N(0, 0.25). Returns (step, params, h0s, xs)."""
  import jax
  import jax.numpy as jnp
  k_w, k_h, k_x = jax.random.split(jax.random.key(seed + 1), 3)
  q, r = jnp.linalg.qr(jax.random.normal(k_w, (D, D), jnp.float64))
  w = scale * q * jnp.sign(jnp.diagonal(r))

  def step(params, h, x):
    return jnp.tanh(params["w"] @ h + x)

  h0s = 0.5 * jax.random.normal(k_h, (trials, D), jnp.float64)
  xs = input_scale * jax.random.normal(k_x, (trials, T, D), jnp.float64)
  return step, {"w": w}, h0s, xs


STABILITY_SYSTEMS = ("lorenz96", "expansive_rnn")
STABILITY_METHODS = ("deer", "quasi_deer", "elk", "quasi_elk")


def stability_variants(methods: Sequence[str] = STABILITY_METHODS,
                       fixed_lams: Sequence[float] = (1e-3, 1e-1),
                       fixed_step: str = "smoother") -> list[dict]:
  """The default setting of each method (chunk-start Newton for deer and
  quasi_deer, adaptive lambda for the damped ones), the papers' per-step Newton
  of deer / quasi_deer, then the fixed-lambda setting (``adaptive_lambda=False,
  lam_init=lam``) of each damped method."""
  out = []
  for m in methods:
    base, options = solver_variant(m)
    out.append({"name": m, "method": base, "options": options})
  for name, (base, options) in PERSTEP_VARIANTS.items():
    if base in methods and name not in methods:
      out.append({"name": name, "method": base, "options": dict(options)})
  for lam in fixed_lams:
    for m in methods:
      if m in ("elk", "quasi_elk"):
        out.append({"name": f"{m} fixed lam={lam:g}", "method": m,
                    "options": {"adaptive_lambda": False, "lam_init": float(lam),
                                "elk_step": fixed_step}})
  return out


def run_stability(*, T: int = 1000, trials: int = 10, systems: Sequence[str] = STABILITY_SYSTEMS,
                  variants: Sequence[dict] | None = None, max_iter: int | None = None,
                  repeats: int = 1, seed: int = 0, deadline_s: float | None = None,
                  log: Log = _say) -> list[dict]:
  """Iterations, wall-clock and max error against the sequential trajectory
  on Lorenz-96 (D=5, F=8, dt=0.01, RK4) and an expansive tanh RNN, float64.

  Every variant solves each trial from a zeros start with ``max_iter`` (default
  T), ``give_up=None`` and ``on_failure="return"`` (the solver's own iterate, no
  fallback; benchmarks/give_up.py measures the default's early exit), one
  compiled program per variant, timed per trial after a warm-up call. Enables
  x64 for the duration of the call. Rows (one per system and variant, plus the
  sequential reference): system, variant, method, options, iterations (per
  trial), converged (count), resets, wall_s (per trial median), max_error.
  """
  import jax

  previous = bool(jax.config.read("jax_enable_x64"))
  jax.config.update("jax_enable_x64", True)
  try:
    return _run_stability(T=T, trials=trials, systems=systems, variants=variants,
                          max_iter=max_iter, repeats=repeats, seed=seed, deadline_s=deadline_s,
                          log=log)
  finally:
    jax.config.update("jax_enable_x64", previous)


def _run_stability(*, T, trials, systems, variants, max_iter, repeats, seed, deadline_s, log):
  import jax
  import jax.numpy as jnp

  from seqtrain.solvers import solve
  variants = list(stability_variants() if variants is None else variants)
  max_iter = T if max_iter is None else int(max_iter)
  start = time.perf_counter()
  rows: list[dict] = []
  for system in systems:
    if system == "lorenz96":
      step, params, h0s, xs = lorenz96_problem(T=T, trials=trials, seed=seed)
    elif system == "expansive_rnn":
      step, params, h0s, xs = expansive_rnn_problem(T=T, trials=trials, seed=seed)
    else:
      raise ValueError(f"unknown system {system!r}; valid: {', '.join(STABILITY_SYSTEMS)}")

    def program(method, options):
      def f(p, h0, x):
        # give_up=None: this benchmark measures the solvers' own convergence.
        return solve(step, p, h0, x, method, max_iter=max_iter, on_failure="return",
                     give_up=None, **options)
      return jax.jit(f)

    def run(method, options):
      t0 = time.perf_counter()
      compiled = program(method, options).lower(params, h0s[0], xs[0]).compile()
      compile_s = time.perf_counter() - t0
      jax.block_until_ready(compiled(params, h0s[0], xs[0]))  # warm-up
      outs, walls = [], []
      for i in range(trials):
        h0, x = h0s[i], xs[i]
        times = []
        for _ in range(max(1, repeats)):
          t0 = time.perf_counter()
          out = jax.block_until_ready(compiled(params, h0, x))
          times.append(time.perf_counter() - t0)
        outs.append(out)
        walls.append(float(np.median(times)))
      return compile_s, outs, walls

    _, ref_outs, ref_walls = run("sequential", {})
    refs = [o[0] for o in ref_outs]
    seq_wall = float(np.median(ref_walls))
    base = {"system": system, "T": T, "D": int(h0s.shape[-1]), "trials": trials,
            "dtype": str(h0s.dtype), "max_iter": max_iter}
    rows.append(dict(base, variant="sequential", method="sequential", options={}, status="ok",
                     reason=None, wall_s=ref_walls, wall_median_s=seq_wall, ratio=1.0,
                     max_error=0.0, iterations=[0] * trials, converged=trials))
    log(_stability_line(rows[-1]))
    for v in variants:
      row = dict(base, variant=v["name"], method=v["method"], options=dict(v["options"]),
                 status="ok", reason=None)
      if deadline_s is not None and time.perf_counter() - start > deadline_s:
        row.update(status="skipped", reason=f"deadline (--deadline-s {deadline_s:g}) reached")
        rows.append(row)
        log(_stability_line(row))
        continue
      try:
        compile_s, outs, walls = run(v["method"], v["options"])
        errs = [float(jnp.max(jnp.abs(o[0] - r))) for o, r in zip(outs, refs)]
        infos = [o[1] for o in outs]
        row.update(
            compile_s=compile_s, wall_s=walls, wall_median_s=float(np.median(walls)),
            ratio=float(np.median(walls)) / seq_wall,
            iterations=[int(i.iterations) for i in infos],
            converged=int(sum(bool(i.converged) for i in infos)),
            resets=int(sum(int(i.resets) for i in infos)),
            residual=[float(i.residual) for i in infos],
            errors=[e if math.isfinite(e) else None for e in errs],
            max_error=float(max(errs)) if all(map(math.isfinite, errs)) else None,
            final_lam=[float(i.lam) for i in infos])
        row["iterations_median"] = float(np.median(row["iterations"]))
        row["iterations_max"] = int(max(row["iterations"]))
      except Exception as e:
        row.update(status="failed", reason=_short_error(e))
      rows.append(row)
      log(_stability_line(row))
  return rows


def _stability_line(r: dict) -> str:
  head = f"stability {r['system']:<13} {r['variant']:<28}"
  if r["status"] != "ok":
    return f"{head} {r['status']}: {r['reason']}"
  its = r["iterations"]
  return (f"{head} it med={np.median(its):<6g} max={max(its):<5d} conv={r['converged']}/"
          f"{r['trials']} err={_fmt(r.get('max_error'), '.1e'):<8} "
          f"wall={_fmt_ms(r['wall_median_s'])} ms (x{r['ratio']:.2f})")


# --------------------------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------------------------

def _jsonable(v):
  if isinstance(v, dict):
    return {str(k): _jsonable(x) for k, x in v.items()}
  if isinstance(v, (list, tuple)):
    return [_jsonable(x) for x in v]
  if isinstance(v, (np.bool_, bool)):
    return bool(v)
  if isinstance(v, (np.integer,)):
    return int(v)
  if isinstance(v, (float, np.floating)):
    v = float(v)
    return v if math.isfinite(v) else None
  if isinstance(v, np.ndarray):
    return _jsonable(v.tolist())
  if v is None or isinstance(v, (str, int)):
    return v
  return str(v)


def write_json(path: str | Path, kind: str, rows: list[dict], env: dict,
               settings: dict | None = None) -> Path:
  """{"kind", "environment", "settings", "rows"} with non-finite floats as null."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  doc = {"kind": kind, "environment": env, "settings": settings or {}, "rows": rows}
  path.write_text(json.dumps(_jsonable(doc), indent=1) + "\n")
  return path


def _env_lines(env: dict | None) -> list[str]:
  if not env:
    return []
  return [f"- device: {env.get('device_kind')} ({env.get('backend')}, "
          f"{env.get('device_count')} device(s)); host {env.get('host')} "
          f"({env.get('machine')}, {env.get('cpu_count')} CPUs)",
          f"- jax {env.get('jax')}, jaxlib {env.get('jaxlib')}, flax {env.get('flax')}, "
          f"torch {env.get('torch') or '-'}; commit {env.get('seqtrain_commit') or '-'}",
          f"- date {env.get('date')}; command `{env.get('command')}`", ""]


def _mb(v) -> str:
  return "-" if v is None else f"{v / 2**20:.3g}"


def grid_markdown(rows: list[dict], env: dict | None = None) -> str:
  """A markdown table per pass, rows in run order."""
  lines = ["# Layer benchmark", ""] + _env_lines(env)
  lines += ["Times are medians after compile and one warm-up call; ratio = time / "
            "`sequential` (lax.scan in ParallelRNN) time in the same group; error = max "
            "|y - y_sequential| (forward) or max relative gradient error (grad; input gradient "
            "only for cudnn); scratch = compiled temp bytes; peak = device peak so far in the "
            "process (torch's own peak for cudnn).", ""]
  for pass_ in ("forward", "grad"):
    sel = [r for r in rows if r["pass"] == pass_]
    if not sel:
      continue
    lines += [f"## {'Forward' if pass_ == 'forward' else 'Forward + gradient'}", "",
              "| cell | D | T | B | method | time ms | ratio | compile s | warm-up ms | n "
              "| iters | error | scratch MiB | peak MiB | status |",
              "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in sel:
      err = r.get("max_error") if pass_ == "forward" else r.get("grad_rel_error")
      status = r["status"] if r["status"] == "ok" else f"{r['status']}: {r['reason']}"
      lines.append(
          f"| {r['cell']} | {r['D']} | {r['T']} | {r['batch']} | {r['method']} | "
          f"{_fmt_ms(r.get('time_s'))} | {_fmt(r.get('ratio'), '.3f')} | "
          f"{_fmt(r.get('compile_s'), '.2f')} | {_fmt_ms(r.get('warmup_s'))} | "
          f"{r.get('repeats') or '-'} | {_fmt(r.get('iterations'), 'd')} | "
          f"{_fmt(err, '.1e')} | {_mb(r.get('temp_bytes'))} | {_mb(r.get('peak_bytes'))} | "
          f"{status} |")
    lines.append("")
  return "\n".join(lines)


def _pyplot():
  try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
  except Exception:
    return None
  return plt


def plot_grid(rows: list[dict], path: str | Path) -> Path | None:
  """Time vs T per method, log-log, one panel per D (a row of panels per pass).
  Returns None (and writes nothing) without matplotlib or without timed rows."""
  ok = [r for r in rows if r["status"] == "ok" and r.get("time_s")]
  plt = _pyplot()
  if plt is None or not ok:
    return None
  passes = [p for p in ("forward", "grad") if any(r["pass"] == p for r in ok)]
  ds = sorted({r["D"] for r in ok})
  multi_cell = len({r["cell"] for r in ok}) > 1
  multi_b = len({r["batch"] for r in ok}) > 1
  fig, axes = plt.subplots(len(passes), len(ds), figsize=(5.5 * len(ds), 4.2 * len(passes)),
                           squeeze=False)
  for i, pass_ in enumerate(passes):
    for j, d in enumerate(ds):
      ax = axes[i][j]
      sel = [r for r in ok if r["pass"] == pass_ and r["D"] == d]
      series: dict[str, list] = {}
      for r in sel:
        label = r["method"] + (f" {r['cell']}" if multi_cell else "") + \
            (f" B={r['batch']}" if multi_b else "")
        series.setdefault(label, []).append((r["T"], r["time_s"]))
      for label, pts in series.items():
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o",
                linestyle="--" if label.startswith(("sequential", "flax_rnn", "cudnn")) else "-",
                label=label)
      ax.set_xscale("log")
      ax.set_yscale("log")
      ax.set_xlabel("T")
      ax.set_ylabel("seconds")
      bs = sorted({r["batch"] for r in sel})
      ax.set_title(f"{'forward' if pass_ == 'forward' else 'forward+grad'}, D={d}, "
                   f"B={','.join(map(str, bs))}")
      ax.grid(True, which="both", alpha=0.3)
      ax.legend(fontsize=8)
  fig.tight_layout()
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def _write_json_markdown(out_dir: str | Path, name: str, kind: str, rows: list[dict], env: dict,
                         settings: dict | None, markdown: str) -> dict:
  """<out_dir>/<name>.json and <name>.md; returns their paths."""
  out_dir = Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  paths = {"json": write_json(out_dir / f"{name}.json", kind, rows, env, settings)}
  (out_dir / f"{name}.md").write_text(markdown + "\n")
  paths["markdown"] = out_dir / f"{name}.md"
  return paths


def write_grid_report(rows: list[dict], env: dict, out_dir: str | Path,
                      settings: dict | None = None, name: str = "solvers") -> dict:
  """<name>.json, <name>.md and <name>.png (when matplotlib is importable)."""
  paths = _write_json_markdown(out_dir, name, "solvers", rows, env, settings,
                               grid_markdown(rows, env))
  png = plot_grid(rows, Path(out_dir) / f"{name}.png")
  if png is not None:
    paths["png"] = png
  return paths


def write_check_report(ok: bool, rows: list[dict], env: dict, out_dir: str | Path,
                       settings: dict | None = None) -> dict:
  lines = ["# Correctness check", ""] + _env_lines(env) + [
      f"**{'all passed' if ok else 'FAILED'}**", "",
      "| pass | cell | method | iters | error | check |", "|---|---|---|---:|---:|---|"]
  for r in rows:
    err = r.get("max_error") if r["pass"] == "forward" else r.get("grad_rel_error")
    lines.append(f"| {r['pass']} | {r['cell']} | {r['method']} | "
                 f"{_fmt(r.get('iterations'), 'd')} | {_fmt(err, '.1e')} | {r['check']} |")
  return _write_json_markdown(out_dir, "check", "check", rows, env,
                              dict(settings or {}, passed=ok), "\n".join(lines))


def training_markdown(rows: list[dict], env: dict | None = None) -> str:
  lines = ["# Training benchmark", ""] + _env_lines(env)
  if rows:
    r0 = rows[0]
    lines += [f"SequenceClassifier({r0['cell']}, width {r0['width']}, depth {r0['depth']}, "
              f"mean_logits), T={r0['T']}, batch {r0['batch']}, {r0['channels']} channels, "
              "random data; full train step (exact gradients, clip 1.0, Adam).", ""]
  lines += ["| method | ms/step | steps/s | speedup vs sequential | iters | fallbacks | compile s "
            "| scratch MiB | loss first -> last | status |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---|---|"]
  for r in rows:
    status = r["status"] if r["status"] == "ok" else f"{r['status']}: {r['reason']}"
    loss = (f"{r['loss_first']:.4f} -> {r['loss_last']:.4f}" if r.get("loss_last") is not None
            else "-")
    lines.append(f"| {r['method']} | {_fmt_ms(r.get('step_s'))} | "
                 f"{_fmt(r.get('steps_per_s'), '.3g')} | {_fmt(r.get('speedup'), '.2f')} | "
                 f"{_fmt(r.get('iterations'), 'd')} | {_fmt(r.get('fallbacks'), 'd')} | "
                 f"{_fmt(r.get('compile_s'), '.1f')} | {_mb(r.get('temp_bytes'))} | {loss} | "
                 f"{status} |")
  return "\n".join(lines)


def write_training_report(rows: list[dict], env: dict, out_dir: str | Path,
                          settings: dict | None = None) -> dict:
  return _write_json_markdown(out_dir, "training", "training", rows, env, settings,
                              training_markdown(rows, env))


def stability_markdown(rows: list[dict], env: dict | None = None) -> str:
  lines = ["# Stability benchmark", ""] + _env_lines(env)
  lines += ["Zeros start, max_iter = T, on_failure='return' (the solver's own iterate); error = "
            "max |h - h_sequential| over trials, steps and dimensions; wall = median over "
            "trials of one solve.", "",
            "| system | T | variant | iters median | iters max | converged | resets | max error "
            "| wall ms | ratio | status |",
            "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---|"]
  for r in rows:
    status = r["status"] if r["status"] == "ok" else f"{r['status']}: {r['reason']}"
    its = r.get("iterations")
    lines.append(
        f"| {r['system']} | {r['T']} | {r['variant']} | "
        f"{_fmt(float(np.median(its)) if its else None, 'g')} | "
        f"{_fmt(max(its) if its else None, 'd')} | "
        f"{r['converged'] if r.get('converged') is not None else '-'}/{r['trials']} | "
        f"{_fmt(r.get('resets'), 'd')} | {_fmt(r.get('max_error'), '.1e')} | "
        f"{_fmt_ms(r.get('wall_median_s'))} | {_fmt(r.get('ratio'), '.2f')} | {status} |")
  return "\n".join(lines)


def write_stability_report(rows: list[dict], env: dict, out_dir: str | Path,
                           settings: dict | None = None) -> dict:
  return _write_json_markdown(out_dir, "stability", "stability", rows, env, settings,
                              stability_markdown(rows, env))


def _pivot(rows: list[dict], pass_: str) -> list[str]:
  """One line per (cell, D, T, B): each method's time (ratio, iterations)."""
  sel = [r for r in rows if r["pass"] == pass_]
  if not sel:
    return []
  methods = list(dict.fromkeys(r["method"] for r in sel))
  keys = list(dict.fromkeys((r["cell"], r["D"], r["T"], r["batch"]) for r in sel))
  out = [f"| cell | D | T | B | " + " | ".join(methods) + " |",
         "|---|---:|---:|---:|" + "---:|" * len(methods)]
  for k in keys:
    cells = []
    for m in methods:
      r = next((r for r in sel if (r["cell"], r["D"], r["T"], r["batch"]) == k
                and r["method"] == m), None)
      if r is None:
        cells.append("")
      elif r["status"] != "ok":
        cells.append(r["status"])
      else:
        it = f", {r['iterations']} it." if r.get("iterations") else ""
        cells.append(f"{_fmt_ms(r['time_s'])} ms (x{r['ratio']:.2f}{it})"
                     if r.get("ratio") is not None else f"{_fmt_ms(r['time_s'])} ms")
    out.append(f"| {k[0]} | {k[1]} | {k[2]} | {k[3]} | " + " | ".join(cells) + " |")
  return out


def summarize(out_dir: str | Path) -> str:
  """A markdown summary of every report (check/solvers/training/stability JSON)
  found under ``out_dir`` (searched recursively)."""
  out_dir = Path(out_dir)
  docs = []
  for p in sorted(out_dir.rglob("*.json")):
    try:
      doc = json.loads(p.read_text())
    except (OSError, ValueError):
      continue
    if isinstance(doc, dict) and doc.get("kind") in ("check", "solvers", "training",
                                                       "stability"):
      docs.append((p, doc))
  order = {"check": 0, "solvers": 1, "training": 2, "stability": 3}
  docs.sort(key=lambda pd: (order[pd[1]["kind"]], str(pd[0])))
  lines = [f"# Benchmark summary: {out_dir}", ""]
  if docs:
    lines += _env_lines(docs[0][1].get("environment", {}))
  for p, doc in docs:
    kind, rows = doc["kind"], doc.get("rows", [])
    rel = p.relative_to(out_dir)
    if kind == "check":
      failed = [r for r in rows if r.get("check") != "pass"]
      lines += [f"## Correctness ({rel})", "",
                f"{len(rows) - len(failed)}/{len(rows)} rows pass" +
                ("" if not failed else ": FAILED " + "; ".join(
                    f"{r['pass']} {r['cell']} {r['method']}: {r['check']}" for r in failed)), ""]
    elif kind == "solvers":
      for pass_ in ("forward", "grad"):
        table = _pivot(rows, pass_)
        if table:
          lines += [f"## Layer, {'forward' if pass_ == 'forward' else 'forward + gradient'} "
                    f"({rel})", "", "time (ratio to sequential, iterations)", ""] + table + [""]
      skipped = [r for r in rows if r["status"] != "ok"]
      if skipped:
        lines += [f"{len(skipped)} rows skipped/failed (reasons in {rel.with_suffix('.md')})",
                  ""]
    elif kind == "training":
      lines += [f"## Training ({rel})", ""] + training_markdown(rows).split("\n")[2:] + [""]
    elif kind == "stability":
      lines += [f"## Stability ({rel})", ""] + stability_markdown(rows).split("\n")[2:] + [""]
  if not docs:
    lines.append("(no benchmark reports found)")
  return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Command lines
# --------------------------------------------------------------------------------------------

def _int_list(text: str) -> list[int]:
  try:
    return [int(float(v)) for v in text.split(",") if v.strip()]
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")


def _float_list(text: str) -> list[float]:
  try:
    return [float(v) for v in text.split(",") if v.strip()]
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}")


def _str_list(text: str) -> list[str]:
  return [v.strip() for v in text.split(",") if v.strip()]


def _grid_methods(text: str) -> list[str]:
  try:
    return [canonical_grid_method(v) for v in _str_list(text)]
  except ValueError as e:
    raise argparse.ArgumentTypeError(str(e))


def _solver_methods(text: str) -> list[str]:
  out = []
  for v in _str_list(text):
    m = canonical_grid_method(v) if v.lower() in GRID_METHODS or v.lower() in _METHOD_ALIASES \
        else v
    if m not in SOLVER_METHODS and m not in PERSTEP_VARIANTS:
      valid = ", ".join(SOLVER_METHODS + tuple(PERSTEP_VARIANTS))
      raise argparse.ArgumentTypeError(f"unknown solver method {v!r}; valid: {valid}")
    out.append(m)
  return out


def _systems(text: str) -> list[str]:
  out = _str_list(text)
  bad = [v for v in out if v not in STABILITY_SYSTEMS]
  if bad:
    raise argparse.ArgumentTypeError(
        f"unknown system {bad[0]!r}; valid: {', '.join(STABILITY_SYSTEMS)}")
  return out


def _cells(text: str) -> list[str]:
  out = _str_list(text)
  bad = [c for c in out if c not in CELLS]
  if bad:
    raise argparse.ArgumentTypeError(f"unknown cell {bad[0]!r}; valid: {', '.join(CELLS)}")
  return out


SMOKE_GRID = {"T": [64, 256], "D": [4], "batch": [2], "repeats": 2}
SMOKE_CHECK = {"T": 64, "D": 4, "batch": 2, "cells": ("gru",),
               "methods": ("sequential", "quasi_deer", "deer", "quasi_elk")}


def add_grid_arguments(p: argparse.ArgumentParser) -> None:
  """The layer-grid flags shared by ``seqtrain bench`` and ``benchmarks/solvers.py``."""
  p.add_argument("--T", type=_int_list, default=[1000, 10000],
                 help="sequence lengths, comma-separated (1e5 style accepted)")
  p.add_argument("--D", type=_int_list, default=[8, 64], help="hidden sizes")
  p.add_argument("--batch", type=_int_list, default=[16], help="batch sizes")
  p.add_argument("--cells", type=_cells, default=["gru"], help=f"of {', '.join(CELLS)}")
  p.add_argument("--methods", type=_grid_methods, default=list(DEFAULT_GRID_METHODS),
                 help=f"of {', '.join(GRID_METHODS)} (sequential always runs: the reference)")
  p.add_argument("--grad", action="store_true", help="also time forward+gradient")
  p.add_argument("--grad-max-T", type=int, default=None,
                 help="gradient pass only up to this T")
  p.add_argument("--repeats", type=int, default=5, help="timed calls per row (median)")
  p.add_argument("--time-limit", type=float, default=10.0,
                 help="seconds of timed calls per row: fewer repeats for slow rows")
  p.add_argument("--max-call-s", type=float, default=60.0,
                 help="skip a row whose call, extrapolated from the previous T, would take longer")
  p.add_argument("--deadline-s", type=float, default=None,
                 help="skip the rows left after this many seconds")
  p.add_argument("--memory-budget-gb", type=float, default=None,
                 help="skip programs needing more (default 90%% of device memory; CPU: half RAM)")
  p.add_argument("--max-iter", type=int, default=None, help="solver max_iter (default: the causal bound)")
  p.add_argument("--chunk", type=int, default=None,
                 help="steps per chunk of the chunked solvers (default: by T)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", default=None,
                 help="output folder (default benchmarks/results/<date>-<device>)")
  p.add_argument("--smoke", action="store_true",
                 help="tiny grid (T=64,256, D=4, batch 2, 2 repeats) for testing the plumbing; "
                 "with --check: T=64, D=4, gru, four methods")
  p.add_argument("--check", action="store_true",
                 help="only the correctness check: every method vs sequential at T=200, D=8 "
                 "(forward and gradient, gru and lstm); exit 1 on failure")


def add_bench_command(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
  """Adds ``seqtrain bench`` (the layer grid) to the ``seqtrain`` sub-parsers."""
  p = subparsers.add_parser(
      "bench", help="time the solvers on one layer over a grid of T, D, batch and method",
      description="Time ParallelRNN (forward, optionally forward+gradient) against lax.scan, "
      "nn.RNN and cuDNN over a grid; writes JSON, markdown and a PNG plot.")
  add_grid_arguments(p)
  return p


def run_bench(args: argparse.Namespace, argv: Sequence[str] | None = None) -> int:
  """Runs ``seqtrain bench`` (or ``benchmarks/solvers.py``) from parsed flags; returns
  the exit code (1 when ``--check`` fails)."""
  env = environment_info(argv)
  out = Path(args.out) if args.out else default_out_dir()
  if args.check:
    check = dict(SMOKE_CHECK) if args.smoke else {}
    ok, rows = run_check(**check)
    paths = write_check_report(ok, rows, env, out, check)
    print(f"wrote {paths['markdown']}", flush=True)
    return 0 if ok else 1
  grid = dict(T=args.T, D=args.D, batch=args.batch, repeats=args.repeats)
  if args.smoke:
    grid.update(SMOKE_GRID)
  settings = dict(grid, cells=args.cells, methods=args.methods, grad=args.grad,
                  grad_max_T=args.grad_max_T, time_limit=args.time_limit,
                  max_call_s=args.max_call_s, deadline_s=args.deadline_s,
                  memory_budget_gb=args.memory_budget_gb, max_iter=args.max_iter,
                  chunk=args.chunk, seed=args.seed, smoke=args.smoke)
  budget = int(args.memory_budget_gb * 1e9) if args.memory_budget_gb else None
  print(f"layer grid on {env['device_kind']}: T={grid['T']} D={grid['D']} "
        f"batch={grid['batch']} cells={args.cells} -> {out}", flush=True)
  rows = run_grid(T=grid["T"], D=grid["D"], batch=grid["batch"], cells=args.cells,
                  methods=args.methods, grad=args.grad, grad_max_T=args.grad_max_T,
                  repeats=grid["repeats"], time_limit=args.time_limit,
                  max_call_s=args.max_call_s, deadline_s=args.deadline_s, memory_budget=budget,
                  max_iter=args.max_iter, chunk=args.chunk, seed=args.seed)
  paths = write_grid_report(rows, env, out, settings)
  print("wrote " + ", ".join(str(p) for p in paths.values()), flush=True)
  return 0


def main_solvers(argv: Sequence[str] | None = None) -> int:
  """``benchmarks/solvers.py``: the same flags as ``seqtrain bench``."""
  p = argparse.ArgumentParser(prog="benchmarks/solvers.py", description=__doc__.split("\n")[0])
  add_grid_arguments(p)
  args = p.parse_args(argv)
  return run_bench(args, argv)


def training_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="benchmarks/training.py",
      description="Steps/s of the 5-layer GRU-32 EigenWorms classifier per method.")
  p.add_argument("--T", type=int, default=17_984)
  p.add_argument("--batch", type=int, default=4)
  p.add_argument("--steps", type=int, default=5, help="timed steps per method (median)")
  p.add_argument("--depth", type=int, default=5)
  p.add_argument("--width", type=int, default=32)
  p.add_argument("--cell", default="gru", choices=["gru", "lstm", "simple", "diag_gru",
                                                    "diag_lstm"])
  p.add_argument("--methods", type=_solver_methods, default=list(TRAIN_METHODS))
  p.add_argument("--time-limit", type=float, default=60.0,
                 help="seconds of timed steps per method: fewer steps for slow methods")
  p.add_argument("--deadline-s", type=float, default=None,
                 help="skip the methods left after this many seconds")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", default=None)
  p.add_argument("--smoke", action="store_true", help="T=64, depth 2, 2 steps")
  return p


def main_training(argv: Sequence[str] | None = None) -> int:
  args = training_parser().parse_args(argv)
  if args.smoke:
    args.T, args.depth, args.steps = 64, 2, 2
  env = environment_info(argv)
  out = Path(args.out) if args.out else default_out_dir()
  settings = {k: v for k, v in vars(args).items() if k != "out"}
  print(f"training benchmark on {env['device_kind']}: T={args.T} batch={args.batch} "
        f"depth={args.depth} width={args.width} -> {out}", flush=True)
  rows = run_training(T=args.T, batch=args.batch, steps=args.steps, methods=args.methods,
                      depth=args.depth, width=args.width, cell=args.cell, seed=args.seed,
                      time_limit=args.time_limit, deadline_s=args.deadline_s)
  paths = write_training_report(rows, env, out, settings)
  print("wrote " + ", ".join(str(p) for p in paths.values()), flush=True)
  return 0


def stability_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="benchmarks/stability.py",
      description="Iterations, wall-clock and error of each method on Lorenz-96 and an "
      "expansive tanh RNN (float64), adaptive vs fixed lambda.")
  p.add_argument("--T", type=int, default=1000)
  p.add_argument("--trials", type=int, default=10, help="initial conditions / input draws")
  p.add_argument("--systems", type=_systems, default=list(STABILITY_SYSTEMS),
                 help=f"of {', '.join(STABILITY_SYSTEMS)}")
  p.add_argument("--methods", type=_solver_methods, default=list(STABILITY_METHODS))
  p.add_argument("--fixed-lams", type=_float_list, default=[1e-3, 1e-1],
                 help="fixed-lambda settings run for elk and quasi_elk (empty: none)")
  p.add_argument("--fixed-step", choices=["smoother", "filter"], default="smoother",
                 help="ELK step for the fixed-lambda settings (filter: the paper's code)")
  p.add_argument("--max-iter", type=int, default=None, help="default T")
  p.add_argument("--repeats", type=int, default=1, help="timed calls per trial (median)")
  p.add_argument("--deadline-s", type=float, default=None)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", default=None)
  p.add_argument("--smoke", action="store_true", help="T=50, 2 trials")
  return p


def main_stability(argv: Sequence[str] | None = None) -> int:
  args = stability_parser().parse_args(argv)
  if args.smoke:
    args.T, args.trials = 50, 2
  import jax
  jax.config.update("jax_enable_x64", True)
  env = environment_info(argv)
  out = Path(args.out) if args.out else default_out_dir()
  settings = {k: v for k, v in vars(args).items() if k != "out"}
  print(f"stability benchmark on {env['device_kind']}: T={args.T} trials={args.trials} "
        f"float64 -> {out}", flush=True)
  rows = run_stability(T=args.T, trials=args.trials, systems=args.systems,
                       variants=stability_variants(args.methods, args.fixed_lams,
                                                   args.fixed_step),
                       max_iter=args.max_iter, repeats=args.repeats, seed=args.seed,
                       deadline_s=args.deadline_s)
  paths = write_stability_report(rows, env, out, settings)
  print("wrote " + ", ".join(str(p) for p in paths.values()), flush=True)
  return 0


def main_report(argv: Sequence[str] | None = None) -> int:
  """``benchmarks/report.py DIR``: print and write DIR/summary.md from the reports in DIR."""
  p = argparse.ArgumentParser(prog="benchmarks/report.py",
                              description="Summarise the benchmark reports in a folder.")
  p.add_argument("dir", help="folder holding check/solvers/training/stability JSON reports")
  p.add_argument("--plot", action="store_true", help="(re)draw the PNG of each solvers JSON")
  args = p.parse_args(argv)
  out = Path(args.dir)
  if not out.is_dir():
    print(f"report: error: {out} is not a folder", file=sys.stderr)
    return 2
  if args.plot:
    for path in out.rglob("*.json"):
      try:
        doc = json.loads(path.read_text())
      except (OSError, ValueError):
        continue
      if isinstance(doc, dict) and doc.get("kind") == "solvers":
        png = plot_grid(doc["rows"], path.with_suffix(".png"))
        print(f"wrote {png}" if png else f"no plot for {path} (matplotlib missing or no rows)")
  text = summarize(out)
  (out / "summary.md").write_text(text + "\n")
  print(text, flush=True)
  return 0
