"""Shared pieces of the benchmarks: method names, environment, timing, memory, JSON / markdown writers."""
from __future__ import annotations

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


def _device_stat(key: str) -> int | None:
  """``key`` of the first device's ``memory_stats()``, or None where the backend has none."""
  import jax
  try:
    stats = jax.devices()[0].memory_stats()
  except Exception:
    return None
  return int(stats[key]) if stats and key in stats else None


def device_peak_bytes() -> int | None:
  """The device's peak bytes in use so far in this process (GPU/TPU; None on CPU)."""
  return _device_stat("peak_bytes_in_use")


def device_memory_limit() -> int | None:
  """Bytes JAX may use on the first device (None where the backend does not say)."""
  return _device_stat("bytes_limit")


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


def _fmt_ms(s) -> str:
  if s is None:
    return "-"
  ms = 1e3 * s
  return f"{ms:.3g}" if ms < 100 else f"{ms:.0f}"


def _fmt(v, spec: str) -> str:
  return "-" if v is None else format(v, spec)


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


def _pyplot():
  try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
  except Exception:
    return None
  return plt


def _write_json_markdown(out_dir: str | Path, name: str, kind: str, rows: list[dict], env: dict,
                         settings: dict | None, markdown: str) -> dict:
  """<out_dir>/<name>.json and <name>.md; returns their paths."""
  out_dir = Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  paths = {"json": write_json(out_dir / f"{name}.json", kind, rows, env, settings)}
  (out_dir / f"{name}.md").write_text(markdown + "\n")
  paths["markdown"] = out_dir / f"{name}.md"
  return paths


DRY_RUN_ENV = "SEQTRAIN_BENCH_DRY_RUN"


def dry_run(args, name: str) -> bool:
  """With SEQTRAIN_BENCH_DRY_RUN=1 a benchmark stops once its arguments are parsed and
  checked, saying so: how the tests run benchmarks/gpu_suite.sh end to end on any
  machine (every step's command line is accepted by its script) without benchmarking."""
  if not os.environ.get(DRY_RUN_ENV):
    return False
  print(f"dry run: {name} accepts {sorted(k for k, v in vars(args).items() if v is not None)}",
        flush=True)
  return True
