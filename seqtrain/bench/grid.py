"""The layer grid (``run_grid``): one ParallelRNN layer over T, D, batch, cell and method, against
lax.scan, nn.RNN and cuDNN; and the quick correctness gate (``run_check``)."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from seqtrain.bench.common import (BASELINES, CELLS, DEFAULT_GRID_METHODS, Log, PERSTEP_VARIANTS,
                                   SOLVER_METHODS, _Skip, _env_lines, _fmt, _fmt_ms, _gb,
                                   _max_abs_diff, _mb, _pyplot, _rel_tree_error, _say, _short_error,
                                   _solver_stats, _write_json_markdown, canonical_grid_method,
                                   compiled_memory, default_memory_budget, device_peak_bytes,
                                   solver_variant, time_calls)


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
