"""seqtrain command line.

    seqtrain train --config configs/basic_motions.py --workdir runs/bm [--config.field=value ...]
    seqtrain eval  --workdir runs/bm [--split test] [--checkpoint best|latest|STEP] [--data NAME|FILE]
                   [--length N [--size M]] [--method M] [--batch-size B]
    seqtrain plot  --workdir runs/bm
    seqtrain data  list | download NAME | prepare NAME | inspect NAME_OR_FILE
    seqtrain bench [--T 1000,10000] [--D 8,64] [--batch 16] [--methods ...] [--grad] [--out DIR]
    seqtrain bench datasets NAME_OR_TRAIN_FILE... [--config FILE] [--config.field=value ...]
    seqtrain bench seq-parallel [--P 1,2,4,8] [--T 1048576] [--check-T 16384] [--out DIR]
    seqtrain demo  [--T 10000] [--D 32] [--batch 4] [--dtype float32]

Errors a user can cause (a bad config field, a malformed data file, a workdir
holding another run) print one line naming the field, file or value and exit 2.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys


def _demo(args) -> int:
  from seqtrain.bench.demo import run_demo
  return run_demo(args)


def _quiet_logs():
  import logging
  import os
  import warnings
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  for name in ("absl", "orbax", "jax._src.xla_bridge"):
    logging.getLogger(name).setLevel(logging.WARNING)
  # orbax says so at WARNING on every process and thread when a preemption stops a run;
  # seqtrain prints its own line ("stopped by a termination signal at step N ...")
  logging.getLogger("absl").addFilter(
      lambda record: "preemption sync point" not in str(record.msg))
  warnings.filterwarnings("ignore", message=".*Sharding info not provided.*")
  try:
    from absl import logging as absl_logging
    absl_logging.set_verbosity(absl_logging.WARNING)
  except ImportError:  # pragma: no cover
    pass


def _distributed(args):
  from seqtrain.parallel.distributed import DistributedArgs, initialize
  initialize(DistributedArgs(args.coordinator, args.num_processes, args.process_id,
                             args.distributed, args.cpu_devices, args.distributed_timeout))


def _add_distributed_flags(p):
  g = p.add_argument_group("multi-process (see launch/README.md)")
  g.add_argument("--coordinator", default=None, help="HOST:PORT of process 0")
  g.add_argument("--num-processes", type=int, default=None)
  g.add_argument("--process-id", type=int, default=None)
  g.add_argument("--distributed", default=None, choices=["auto", "none"],
                 help="auto: JAX's cluster auto-detection (SLURM, Cloud TPU, Kubernetes)")
  g.add_argument("--distributed-timeout", type=int, default=None, metavar="SECONDS",
                 help="how long to wait for the coordinator (default 300; "
                      "SEQTRAIN_DISTRIBUTED_TIMEOUT)")
  g.add_argument("--cpu-devices", type=int, default=None,
                 help="split a CPU host into this many devices (testing)")


def _train(args) -> int:
  from seqtrain.train import config as config_lib
  config = config_lib.load_config(args.config, args.overrides)
  _distributed(args)
  from seqtrain.train.trainer import train_and_evaluate
  result = train_and_evaluate(config, args.workdir, allow_config_change=args.allow_config_change)
  if result.get("preempted"):
    print(f"stopped by a termination signal at step {result['step']}, checkpoint saved; run the "
          f"same command to resume", flush=True)
    return 0
  test = result.get("test") or result.get("validation")
  import jax
  if test and jax.process_index() == 0:
    model = result.get("model", {})
    base = (test.get("baselines") or {}).get("1nn_euclidean")
    print(f"done: {args.workdir}; {'test' if 'test' in result else 'validation'} accuracy "
          f"{test['accuracy']:.4f} ({model.get('checkpoint', 'latest')} checkpoint, step "
          f"{model.get('step', result['step'])}"
          + (f"; 1-NN Euclidean {base:.4f}" if base is not None else "") + "); "
          f"`seqtrain eval --workdir {shlex.quote(str(args.workdir))}` for the full report of "
          f"that checkpoint, `seqtrain plot --workdir {shlex.quote(str(args.workdir))}` for "
          "curves")
  return 0


def _eval(args) -> int:
  _distributed(args)
  from seqtrain.train.evaluate import evaluate_workdir
  evaluate_workdir(args.workdir, split=args.split, checkpoint=args.checkpoint, data=args.data,
                   data_dir=args.data_dir, length=args.length, size=args.size,
                   method=args.method, batch_size=args.batch_size, out=args.out)
  return 0


def _plot(args) -> int:
  from seqtrain.train.plots import plot_run
  print(f"wrote {plot_run(args.workdir, args.out)}")
  return 0


def _multi_process() -> bool:
  """Whether this process joined a multi-process JAX job (without starting JAX)."""
  if "jax" not in sys.modules:
    return False
  from jax._src import distributed
  return distributed.global_state.client is not None


def _user_errors():
  from seqtrain.data.ts import DataFormatError
  from seqtrain.train.config import ConfigError
  from seqtrain.train.evaluate import EvalError
  from seqtrain.train.checkpoint import CheckpointError
  from seqtrain.train.trainer import ResumeError, TrainingError
  return (ConfigError, DataFormatError, EvalError, ResumeError, TrainingError, CheckpointError,
          OSError, ValueError)


def _bench_datasets(argv) -> int:
  from seqtrain.bench import datasets as bench_datasets
  parser = argparse.ArgumentParser(prog="seqtrain bench datasets",
                                   description=bench_datasets.__doc__.split("\n")[0])
  bench_datasets.add_arguments(parser)
  args, unknown = parser.parse_known_args(argv)
  bad = [u for u in unknown if not u.startswith("--config.")]
  if bad:
    parser.error(f"unrecognized arguments: {' '.join(bad)}")
  overrides = [u[len("--config."):] for u in unknown]
  _quiet_logs()
  try:
    return bench_datasets.run(args, overrides, ["bench", "datasets", *argv])
  except _user_errors() as e:
    if os.environ.get("SEQTRAIN_DEBUG"):
      raise
    print(f"seqtrain bench datasets: error: {e}", file=sys.stderr)
    return 2


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  if argv[:2] == ["bench", "datasets"]:
    return _bench_datasets(argv[2:])
  if argv[:2] == ["bench", "seq-parallel"]:
    from seqtrain.bench import seq_parallel as bench_seq
    return bench_seq.main(argv[2:])
  parser = argparse.ArgumentParser(prog="seqtrain", description=__doc__.split("\n")[0])
  sub = parser.add_subparsers(dest="command", required=True)

  train = sub.add_parser("train", help="train (or resume) a classifier in a workdir",
                         description="Train a classifier; running again on the same workdir "
                         "resumes from its latest checkpoint.")
  train.add_argument("--config", required=True,
                     help="config file, optionally with a variant: configs/basic_motions.py:tiny")
  train.add_argument("--workdir", required=True, help="where checkpoints, metrics and logs go")
  train.add_argument("--allow-config-change", action="store_true",
                     help="resume (fine-tune) even if the model or dataset fields changed")
  _add_distributed_flags(train)

  ev = sub.add_parser("eval", help="evaluate a trained workdir")
  ev.add_argument("--workdir", required=True)
  ev.add_argument("--split", default="test", choices=["train", "validation", "test"])
  ev.add_argument("--checkpoint", default=None,
                  help="best, latest or a step number (default: the run's model, train.select: "
                       "the checkpoint whose test accuracy `seqtrain train` reported)")
  ev.add_argument("--data", default=None,
                  help="evaluate on another archive dataset (by name) or a .ts/.npz file")
  ev.add_argument("--data-dir", default=None, help="extra folder to look for --data in")
  ev.add_argument("--length", type=int, default=None,
                  help="synthetic tasks: evaluate on freshly generated series of this length "
                       "(train short, infer long)")
  ev.add_argument("--size", type=int, default=None,
                  help="with --length: number of examples (default: the run's split size)")
  ev.add_argument("--method", default=None,
                  help="solver method to run (default: the run's, e.g. auto)")
  ev.add_argument("--out", default=None,
                  help="folder for the report (default <workdir>/eval; e.g. for a read-only "
                  "workdir)")
  ev.add_argument("--batch-size", type=int, default=None,
                  help="examples per eval batch (default: the run's train.eval_batch_size)")
  _add_distributed_flags(ev)

  plot = sub.add_parser("plot", help="PNG of the loss/accuracy/validation/solver curves")
  plot.add_argument("--workdir", required=True)
  plot.add_argument("--out", default=None, help="output PNG (default <workdir>/curves.png)")

  from seqtrain.data.commands import add_data_commands, run_data
  add_data_commands(sub)
  from seqtrain.bench import add_bench_command, run_bench
  add_bench_command(sub)

  demo = sub.add_parser("demo", help="run every solver on an untrained GRU against lax.scan")
  demo.add_argument("--T", type=int, default=10_000)
  demo.add_argument("--D", type=int, default=32)
  demo.add_argument("--batch", type=int, default=4)
  demo.add_argument("--dtype", choices=["float32", "float64"], default="float32")
  demo.add_argument("--repeats", type=int, default=3)
  demo.add_argument("--seed", type=int, default=0)

  args, unknown = parser.parse_known_args(argv)
  if args.command == "train":
    bad = [u for u in unknown if not u.startswith("--config.")]
    if bad:
      parser.error(f"unrecognized arguments: {' '.join(bad)}")
    args.overrides = unknown
  elif unknown:
    parser.error(f"unrecognized arguments: {' '.join(unknown)}")
  if args.command == "data":
    return run_data(args)
  if args.command == "demo":
    return _demo(args)
  if args.command == "bench":
    _quiet_logs()
    return run_bench(args, argv)
  from seqtrain.parallel.supervise import needs_supervisor, supervise
  if needs_supervisor(args):   # one process of a multi-process job: see supervise.py
    pid = args.process_id if args.process_id is not None else \
        os.environ.get("SEQTRAIN_PROCESS_ID")
    return supervise(list(sys.argv[1:] if argv is None else argv), args.command, args.workdir,
                     f"process {pid}" if pid is not None else "this process")
  _quiet_logs()
  commands = {"train": _train, "eval": _eval, "plot": _plot}
  try:
    return commands[args.command](args)
  except _user_errors() as e:
    if os.environ.get("SEQTRAIN_DEBUG"):
      raise
    print(f"seqtrain {args.command}: error: {e}", file=sys.stderr)
    if _multi_process():
      # JAX's exit handler would wait for every peer at a shutdown barrier (a dead one
      # until the heartbeat timeout, then abort with a C++ stack trace): the message
      # above is the whole report, and the peers stop at their next collective.
      sys.stdout.flush()
      sys.stderr.flush()
      os._exit(2)
    return 2
  except KeyboardInterrupt:
    print(f"seqtrain {args.command}: interrupted", file=sys.stderr)
    return 130


if __name__ == "__main__":
  sys.exit(main())
