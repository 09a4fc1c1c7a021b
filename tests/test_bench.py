"""The benchmark library (seqtrain.bench), its CLIs and the GPU suite script, at tiny sizes."""
from __future__ import annotations

import argparse
import json
import os
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from seqtrain import bench

REPO = Path(__file__).resolve().parent.parent


def test_grid_cli_rows_and_reports(tmp_path):
  parser = argparse.ArgumentParser(prog="seqtrain")
  sub = parser.add_subparsers(dest="command", required=True)
  bench.add_bench_command(sub)
  # T=128 only for sequential: the others' time, extrapolated from T=64, exceeds --max-call-s
  argv = ["bench", "--T", "64,128", "--D", "4", "--batch", "2", "--methods",
          "sequential,quasi_deer,quasi_deer_perstep,deer,cudnn", "--repeats", "2",
          "--max-call-s", "1e-9",
          "--out", str(tmp_path)]
  args = parser.parse_args(argv)
  assert args.command == "bench" and args.T == [64, 128] and args.D == [4] and not args.grad
  assert bench.run_bench(args, argv) == 0

  doc = json.loads((tmp_path / "solvers.json").read_text())
  assert doc["kind"] == "solvers"
  for key in ("jax", "jaxlib", "flax", "device_kind", "command", "date", "machine"):
    assert key in doc["environment"]
  long = {r["method"]: r for r in doc["rows"] if r["T"] == 128}
  assert long["sequential"]["status"] == "ok"  # the reference always runs
  for m in ("quasi_deer", "quasi_deer_perstep", "deer"):
    assert long[m]["status"] == "skipped" and "estimated" in long[m]["reason"]
  rows = {r["method"]: r for r in doc["rows"] if r["T"] == 64}
  assert set(rows) == {"sequential", "quasi_deer", "quasi_deer_perstep", "deer", "cudnn"}
  for m in ("sequential", "quasi_deer", "quasi_deer_perstep", "deer"):
    r = rows[m]
    assert r["status"] == "ok", r
    assert r["pass"] == "forward" and (r["T"], r["D"], r["batch"]) == (64, 4, 2)
    assert math.isfinite(r["time_s"]) and r["time_s"] > 0 and r["repeats"] >= 1
    assert r["compile_s"] > 0 and r["warmup_s"] > 0
    assert r["max_error"] < 1e-4
    assert r["temp_bytes"] is not None
  assert rows["sequential"]["ratio"] == 1.0 and rows["sequential"]["max_error"] == 0.0
  for m in ("quasi_deer", "quasi_deer_perstep", "deer"):
    assert rows[m]["iterations"] >= 1 and rows[m]["converged"] and rows[m]["fallbacks"] == 0
    assert rows[m]["ratio"] == pytest.approx(rows[m]["time_s"] / rows["sequential"]["time_s"])
  assert rows["cudnn"]["status"] == "skipped" and rows["cudnn"]["reason"]  # no CUDA torch here

  md = (tmp_path / "solvers.md").read_text()
  assert "| gru | 4 | 64 | 2 | quasi_deer |" in md
  png = tmp_path / "solvers.png"
  assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"
  assert "quasi_deer" in bench.summarize(tmp_path)


def test_grid_gradient_pass_and_skips(monkeypatch):
  assert bench._dense_bytes("elk", "forward", 16, 1000, 8) == 2 * 16 * 1000 * 64 * 4
  assert bench._dense_bytes("deer_perstep", "grad", 16, 1000, 8) > 0  # dense adjoint
  assert bench._dense_bytes("deer", "grad", 16, 1000, 8) == 0  # shoot adjoint: (C, D, D)
  assert bench._dense_bytes("deer", "forward", 16, 1000, 8) == 0
  assert bench._dense_bytes("quasi_elk", "grad", 16, 1000, 8) == 0
  from seqtrain.bench import grid
  monkeypatch.setattr(grid, "_dense_bytes", lambda method, *a: 1 << 60 if method == "elk" else 0)
  lines = []
  # (flax_rnn: the gradient path at the lowest compile cost; the solvers' gradients
  # against sequential are the business of run_check and the solver tests)
  rows = bench.run_grid(T=[16, 32], D=[3], batch=1, methods=["sequential", "flax_rnn", "elk"],
                        forward=False, grad=True, grad_max_T=16, repeats=1,
                        memory_budget=1 << 30, log=lines.append)
  assert len(lines) == len(rows) == 6
  by = {(r["T"], r["method"]): r for r in rows}
  assert all(r["pass"] == "grad" for r in rows)
  seq, ref = by[16, "sequential"], by[16, "flax_rnn"]
  assert seq["grad_rel_error"] == 0.0 and seq["iterations"] == 0 and seq["ratio"] == 1.0
  assert ref["status"] == "ok" and ref["grad_rel_error"] < 1e-4 and ref["iterations"] is None
  assert ref["ratio"] > 0 and math.isfinite(ref["time_s"])
  # elk's dense (T, D, D) Jacobians exceed the budget: skipped with the reason
  assert by[16, "elk"]["status"] == "skipped" and "memory budget" in by[16, "elk"]["reason"]
  assert all(by[32, m]["status"] == "skipped" for m in ("sequential", "flax_rnn", "elk"))
  assert "grad-max-T" in by[32, "flax_rnn"]["reason"]


def test_training_benchmark_tiny(tmp_path):
  # sequential compiles fastest; the solver methods share the same step (ParallelRNN)
  rows = bench.run_training(T=32, depth=1, steps=2, methods=["sequential"],
                            recompute=(False, True), log=lambda _: None)
  r, rc = rows
  assert (r["method"], rc["method"]) == ("sequential", "sequential+recompute")
  assert rc["status"] == "ok" and rc["loss_first"] == r["loss_first"], rc
  assert r["status"] == "ok", r
  assert r["steps"] == 2 and len(r["times_s"]) == 2 and r["speedup"] == 1.0
  assert r["steps_per_s"] > 0 and math.isfinite(r["loss_last"]) and r["compile_s"] > 0
  assert r["iterations"] == 0 and r["fallbacks"] == 0 and r["skipped_updates"] == 0
  paths = bench.write_training_report(rows, {"device_kind": "cpu"}, tmp_path)
  assert "| sequential |" in paths["markdown"].read_text()


def test_stability_lorenz_deer_converges_float64():
  import jax
  before = jax.config.read("jax_enable_x64")
  rows = bench.run_stability(T=50, trials=2, systems=["lorenz96"],
                             variants=bench.stability_variants(["deer"], fixed_lams=[]),
                             log=lambda _: None)
  assert jax.config.read("jax_enable_x64") == before
  by = {r["variant"]: r for r in rows}
  assert set(by) == {"sequential", "deer", "deer_perstep"}
  assert by["deer_perstep"]["options"] == {"mode": "recompute", "adjoint": "dense"}
  for name in ("deer", "deer_perstep"):
    deer = by[name]
    assert deer["status"] == "ok" and deer["dtype"] == "float64"
    assert deer["converged"] == 2 and deer["max_iter"] == 50
    assert all(1 <= i <= 50 for i in deer["iterations"])
    assert deer["max_error"] < 1e-6
  assert "lorenz96" in bench.stability_markdown(rows, {})


def test_lorenz96_step_matches_reference_formula():
  import jax.numpy as jnp
  step = bench.lorenz96_step(dt=0.01)
  h = jnp.asarray([1.0, 2.0, -1.0, 0.5, 3.0], jnp.float32)   # x64 off here (conftest)
  f = 8.0

  def vf(x):
    n = len(x)
    return np.array([(x[(i + 1) % n] - x[i - 2]) * x[i - 1] - x[i] + f for i in range(n)])

  x = np.asarray(h)
  k1 = vf(x)
  k2 = vf(x + 0.005 * k1)
  k3 = vf(x + 0.005 * k2)
  k4 = vf(x + 0.01 * k3)
  want = x + 0.01 / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
  got = step({"forcing": f}, h, None)
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6)


def test_torch_weight_mapping_matches_flax():
  torch = pytest.importorskip("torch")
  import jax
  import jax.numpy as jnp
  from flax import linen as nn
  for cell, mod in (("gru", nn.GRUCell(3)), ("lstm", nn.LSTMCell(3))):
    x = jax.random.normal(jax.random.key(1), (2, 7, 3), jnp.float32)
    params = nn.RNN(mod).init(jax.random.key(0), x)
    want = np.asarray(nn.RNN(mod).apply(params, x))
    rnn = bench.torch_rnn_from_flax(torch, cell, params, 3, "cpu")
    got = rnn(torch.from_numpy(np.asarray(x)))[0].detach().numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_method_names_and_lists():
  assert bench.canonical_grid_method("nn.RNN") == "flax_rnn"
  assert bench.canonical_grid_method("ike") == "elk"
  with pytest.raises(ValueError, match="valid"):
    bench.canonical_grid_method("newton")
  assert bench._int_list("1e4,100000") == [10000, 100000]
  names = [v["name"] for v in bench.stability_variants(fixed_lams=[1e-2])]
  assert names == ["deer", "quasi_deer", "elk", "quasi_elk", "quasi_deer_perstep",
                   "deer_perstep", "elk fixed lam=0.01", "quasi_elk fixed lam=0.01"]
  assert bench.solver_variant("quasi_deer_perstep") == ("quasi_deer",
                                                        {"mode": "store", "adjoint": "quasi"})
  assert bench.solver_variant("quasi_deer") == ("quasi_deer", {})
  assert bench._solver_methods("scan,deer_perstep") == ["sequential", "deer_perstep"]


STEPS = ("correctness check", "layer grid", "training", "auto crossover", "sequence parallel",
         "stability", "summary")


@pytest.mark.parametrize("smoke", [True, False])
def test_gpu_suite_runs_every_step_with_arguments_its_script_accepts(tmp_path, smoke):
  """gpu_suite.sh end to end, as a GPU session runs it, in dry-run mode: every step's
  script parses and checks its arguments (SEQTRAIN_BENCH_DRY_RUN) and stops there."""
  env = dict(os.environ, SEQTRAIN_BENCH_DRY_RUN="1", PYTHON=sys.executable)
  out = tmp_path / "out"
  cmd = ["bash", str(REPO / "benchmarks" / "gpu_suite.sh")] + (["--smoke"] if smoke else []) + [
      str(out)]
  run = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
  log = run.stdout + run.stderr
  assert run.returncode == 0, log
  assert "gpu_suite: all steps succeeded" in log
  chunks = ("8", "64") if smoke else ("16", "128")
  for name in STEPS + tuple(f"chunk {k}" for k in chunks):
    assert f"=== {name} done" in log, (name, log)
  assert log.count("dry run: ") == len(STEPS) + len(chunks)
  assert log.count("dry run: layer grid accepts") == 1 + len(chunks)
  assert (out / "suite.log").exists() and (out / "devices.txt").exists()
  # a bad argument fails its step and the suite's exit status, the other steps still run
  bad = subprocess.run([sys.executable, str(REPO / "benchmarks" / "solvers.py"), "--methods",
                        "newton", "--out", str(tmp_path / "x")], capture_output=True, text=True,
                       env=env, timeout=60)
  assert bad.returncode == 2 and "newton" in bad.stderr


def test_scripts_parse():
  for script in ("solvers", "training", "stability", "report", "auto_crossover", "seq_parallel"):
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / f"{script}.py"), "--help"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
  assert bench.training_parser().parse_args(["--smoke"]).smoke
  assert bench.stability_parser().parse_args(["--smoke"]).smoke
  suite = REPO / "benchmarks" / "gpu_suite.sh"
  grid = argparse.ArgumentParser()
  bench.add_grid_arguments(grid)
  assert grid.parse_args(["--chunk", "16"]).chunk == 16 and grid.parse_args([]).chunk is None
  usage = subprocess.run(["bash", str(suite)], capture_output=True, text=True)
  assert usage.returncode == 2 and "usage" in usage.stderr


def test_auto_crossover_benchmark_reports_what_auto_ran(tmp_path):
  """benchmarks/auto_crossover.py times auto next to sequential and quasi_deer in
  one run and records what auto resolved to (on CPU: lax.scan at every length)."""
  out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "auto_crossover.py"),
                        "--T", "16", "--D", "4", "--batch", "2", "--repeats", "1",
                        "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr
  rows = json.loads((tmp_path / "auto_crossover.json").read_text())["rows"]
  assert [(r["T"], r["D"], r["auto_runs"]) for r in rows] == [(16, 4, "sequential")]
  assert all(r[f"{m}_ms"] > 0 for r in rows for m in ("sequential", "quasi_deer", "auto"))
  assert "| 16 | 4 | 2 | sequential |" in (tmp_path / "auto_crossover.md").read_text()


def test_seq_parallel_benchmark_memory_falls_with_devices(tmp_path):
  """`seqtrain bench seq-parallel` on 2 forced CPU devices: per-device compiled memory
  about halves, the run matches lax.scan, a P beyond the devices is a skipped row."""
  out = subprocess.run([sys.executable, "-m", "seqtrain.cli", "bench", "seq-parallel",
                        "--P", "1,2,4", "--T", "4096", "--check-T", "256", "--batch", "2",
                        "--D", "4", "--repeats", "1", "--cpu-devices", "2",
                        "--out", str(tmp_path)], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "XLA_FLAGS": ""})
  assert out.returncode == 0, out.stderr
  rows = json.loads((tmp_path / "seq_parallel.json").read_text())["rows"]
  by = {(r["devices"], r["axis"]): r for r in rows}
  assert by[(1, False)]["forward_ratio"] == 1.0
  assert by[(2, True)]["forward_ratio"] < 0.6 and by[(2, True)]["gradient_ratio"] < 0.6
  for key in ((1, True), (2, True)):
    assert by[key]["state_error"] < 1e-4 and by[key]["grad_rel_error"] < 1e-4
    assert by[key]["converged"] and by[key]["iterations"] >= 1
  assert "skipped" in by[(4, True)]
  assert "| 2 | 2048 |" in (tmp_path / "seq_parallel.md").read_text()
