"""Ablation of the long-memory recipe on the synthetic long tasks.

    python benchmarks/long_memory.py --T 1024 --steps 400 --out benchmarks/results/<machine>/

Trains configs/synthetic_long.py for every (task, variant) with the same seed,
data and step budget, one run after another, and records the test accuracy, the
wall time, and on the first --iter-examples test series the task's oracle and
the solver iterations per layer of the trained model (with --iter-method,
default quasi_deer).  A variant is the shipped recipe
with some of its choices undone (``VARIANTS``).  Writes long_memory.json / .md.
"""
from __future__ import annotations

import argparse
import tempfile
import time

# The shipped recipe (configs/synthetic_long.py) with one or more choices undone.
VARIANTS = {
    "recipe": [],
    "no stem": ["model.stem_kernel=1"],
    "fixed training length": ["data.train_min_length=0", "data.bucket_boundaries=()",
                              "data.bucket_window=0"],
    "mean pooling": ["model.pooling=mean"],
    "max pooling": ["model.pooling=max"],
    "diag_gru cell": ["model.cell=diag_gru"],
    "width 64": ["model.width=64"],
    "depth 3": ["model.depth=3"],
    # the recipe of 2026-12-01 (before the stem and the mixed training lengths)
    "2026-12-01 recipe": ["model.stem_kernel=1", "data.train_min_length=0",
                          "data.bucket_boundaries=()", "data.bucket_window=0"],
    "diag_gru + mean (before)": ["model.cell=diag_gru", "model.pooling=mean",
                                 "model.stem_kernel=1", "data.train_min_length=0",
                                 "data.bucket_boundaries=()", "data.bucket_window=0"],
}


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--tasks", default="motif,spectral,order")
  ap.add_argument("--variants", default=",".join(VARIANTS))
  ap.add_argument("--T", type=int, default=1024)
  ap.add_argument("--steps", type=int, default=400)
  ap.add_argument("--iter-method", default="quasi_deer")
  ap.add_argument("--iter-examples", type=int, default=16)
  ap.add_argument("--out", required=True)
  args = ap.parse_args(argv)

  import contextlib
  import io

  from seqtrain import bench
  from seqtrain.train import config as config_lib
  from seqtrain.train.evaluate import evaluate_workdir
  from seqtrain.train.trainer import train_and_evaluate

  rows = []
  for task in args.tasks.split(","):
    for name in args.variants.split(","):
      overrides = [f"train.steps={args.steps}", f"train.eval_every={args.steps}",
                   f"train.checkpoint_every={args.steps}", "train.log_every=100"]
      overrides += VARIANTS[name]
      config = config_lib.load_config(f"configs/synthetic_long.py:{task},{args.T}", overrides)
      with tempfile.TemporaryDirectory() as workdir:
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
          result = train_and_evaluate(config, workdir)
        seconds = time.perf_counter() - t0
        with contextlib.redirect_stdout(io.StringIO()):
          m = evaluate_workdir(workdir, length=args.T, size=args.iter_examples,
                               method=args.iter_method, batch_size=args.iter_examples)
      iters = {k.rsplit("/", 2)[0]: int(v) for k, v in sorted(m["solver"].items())
               if k.endswith("/iterations")}
      row = {"task": task, "variant": name, "overrides": VARIANTS[name], "T": args.T,
             "steps": args.steps, "test_accuracy": round(result["test"]["accuracy"], 4),
             "oracle_accuracy": m["oracle_accuracy"], "seconds": round(seconds, 1),
             "iter_method": args.iter_method, "iterations": iters}
      rows.append(row)
      print(row, flush=True)

  env = bench.environment_info(argv)
  settings = {"T": args.T, "steps": args.steps, "tasks": args.tasks.split(","),
              "iter_method": args.iter_method, "iter_examples": args.iter_examples}
  lines = [f"# Long-memory recipe ablation: synthetic tasks at T={args.T}, {args.steps} steps",
           "", "Test accuracy (256 test series), and the oracle's accuracy and "
           f"{args.iter_method}'s iterations per layer of the trained model on the first "
           f"{args.iter_examples} of them.", ""]
  lines += bench._env_lines(env)
  tasks = args.tasks.split(",")
  lines += ["| variant | " + " | ".join(f"{t} acc | {t} iters" for t in tasks) + " | seconds |",
            "|---|" + "---:|---:|" * len(tasks) + "---:|"]
  for name in args.variants.split(","):
    cells, secs = [], 0.0
    for t in tasks:
      (r,) = [r for r in rows if r["task"] == t and r["variant"] == name]
      iters = "/".join(str(v) for v in r["iterations"].values())
      cells.append(f"{r['test_accuracy']:.3f} | {iters}")
      secs += r["seconds"]
    lines.append(f"| {name} | " + " | ".join(cells) + f" | {secs:.0f} |")
  oracle = " | ".join(f"{[r for r in rows if r['task'] == t][0]['oracle_accuracy']:.3f} | -"
                      for t in tasks)
  lines.append(f"| (oracle) | {oracle} | - |")
  bench._write_json_markdown(args.out, "long_memory", "long_memory", rows, env, settings,
                             "\n".join(lines))


if __name__ == "__main__":
  main()
