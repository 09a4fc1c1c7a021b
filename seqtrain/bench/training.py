"""Training steps/s of the papers' EigenWorms classifier per method (``run_training``)."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from seqtrain.bench.common import (Log, PERSTEP_VARIANTS, TRAIN_METHODS, _env_lines, _fmt, _fmt_ms,
                                   _mb, _say, _short_error, _write_json_markdown, compiled_memory,
                                   device_peak_bytes, solver_variant, time_calls)


# --------------------------------------------------------------------------------------------
# Training steps/s
# --------------------------------------------------------------------------------------------

def run_training(*, T: int = 17_984, batch: int = 4, steps: int = 5,
                 methods: Sequence[str] = TRAIN_METHODS, depth: int = 5, width: int = 32,
                 channels: int = 6, num_classes: int = 5, cell: str = "gru", lr: float = 3e-5,
                 seed: int = 0, time_limit: float | None = 60.0,
                 deadline_s: float | None = None, recompute: Sequence[bool] = (False,),
                 log: Log = _say) -> list[dict]:
  """Steps/s of the papers' EigenWorms classifier per method, on random data.

  ``SequenceClassifier(num_classes, width, depth, cell, pooling="mean_logits",
  mlp_ratio=1)``, built from a training config the way a run builds it
  (``steps.build_train_state``), and a full train step
  (``steps.make_train_step`` on a one-device mesh: loss, exact gradients,
  global-norm clip 1.0, Adam).
  Every method starts from the same parameters. One warm-up step (timed
  separately, after compilation), then up to ``steps`` individually timed
  steps (fewer when they would exceed ``time_limit``). Rows: method, status,
  compile_s, warmup_s, step_s (median), steps_per_s, speedup (sequential's
  step_s / step_s), iterations (max over layers, last step), fallbacks,
  loss_first / loss_last, temp_bytes. ``recompute``: each method with
  ``model.recompute`` off and / or on (rows "METHOD+recompute").
  """
  import jax

  from seqtrain.parallel.mesh import host_to_global, make_mesh
  from seqtrain.solvers import canonical_method
  from seqtrain.train import config as config_lib
  from seqtrain.train.steps import build_train_state, make_train_step

  methods = [m if m in PERSTEP_VARIANTS else canonical_method(m) for m in methods]
  mesh = make_mesh(("data",), (1,), devices=jax.devices()[:1])
  rng = np.random.default_rng(seed)
  data = host_to_global({
      "inputs": rng.standard_normal((batch, T, channels)).astype(np.float32),
      "lengths": np.full((batch,), T, np.int32),
      "labels": rng.integers(0, num_classes, batch).astype(np.int32),
      "mask": np.ones((batch,), np.float32)}, mesh)

  def setup_for(method, rc=False):
    base, options = solver_variant(method)
    c = config_lib.base_config()
    c.seed = seed
    c.model.width, c.model.depth, c.model.cell = width, depth, cell
    c.model.pooling, c.model.mlp_ratio = "mean_logits", 1
    c.model.solver.method = base
    for field, value in options.items():
      c.model.solver[field] = value
    c.train.optimizer, c.train.learning_rate, c.train.grad_clip = "adam", lr, 1.0
    c.train.schedule, c.train.warmup_steps = "constant", 0
    c.model.recompute = rc
    return build_train_state(config_lib.validate(c), num_classes, channels, mesh)

  state0 = setup_for("sequential").fresh()   # every method starts from these parameters
  start = time.perf_counter()
  rows: list[dict] = []
  for method, rc in [(m, rc) for m in methods for rc in recompute]:
    row: dict[str, Any] = {"method": method + ("+recompute" if rc else ""), "recompute": rc,
                           "T": T, "batch": batch, "depth": depth,
                           "width": width, "cell": cell, "channels": channels, "status": "ok",
                           "reason": None}
    if deadline_s is not None and time.perf_counter() - start > deadline_s:
      row.update(status="skipped", reason=f"deadline (--deadline-s {deadline_s:g}) reached")
      rows.append(row)
      log(_train_line(row))
      continue
    try:
      setup = setup_for(method, rc)
      step = jax.jit(make_train_step(setup.model, setup.tx, mesh, setup.lr_schedule))
      t0 = time.perf_counter()
      compiled = step.lower(state0, data).compile()
      row["compile_s"] = time.perf_counter() - t0
      row.update(compiled_memory(compiled))
      carry = [state0, None]   # each step starts from the previous one's state

      def one_step():
        carry[0], carry[1] = compiled(carry[0], data)
        return tuple(carry)

      timing, (_, first) = time_calls(one_step, repeats=steps, time_limit=time_limit)
      metrics = carry[1]
      row.update(warmup_s=timing["warmup_s"], loss_first=float(first["loss"]),
                 step_s=timing["time_s"], times_s=timing["times_s"], steps=timing["repeats"],
                 steps_per_s=1.0 / timing["time_s"], loss_last=float(metrics["loss"]),
                 skipped_updates=int(metrics["skipped"]), peak_bytes=device_peak_bytes())
      its = [int(v) for k, v in metrics.items() if k.endswith("iterations")]
      fbs = [int(v) for k, v in metrics.items() if k.endswith("fallbacks")]
      row["iterations"] = max(its) if its else None
      row["fallbacks"] = sum(fbs) if fbs else None
      carry.clear()   # free this method's state before the next one compiles
      del first, metrics
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
