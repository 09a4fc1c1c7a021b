"""Soak test: kill training at random moments, restart, repeat; the result must equal an
uninterrupted run. Not collected by pytest (minutes); run it by hand:

    python tests/soak.py --kills 20 --steps 60 [--seed 0] [--workdir /tmp/soak]

Each round starts `seqtrain train` on the same workdir and SIGKILLs it after a random
delay (often inside a checkpoint save: checkpoint_every=3); a final run finishes it.
Exit 0 when the final parameters equal the reference run's bit for bit.
"""
import argparse
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from runs import ROOT, clean_env, final_params, read_log, run, train_cmd  # noqa: E402


def main() -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--kills", type=int, default=20)
  p.add_argument("--steps", type=int, default=60)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--workdir", type=Path, default=Path("/tmp/seqtrain-soak"))
  args = p.parse_args()
  rng = random.Random(args.seed)
  shutil.rmtree(args.workdir, ignore_errors=True)
  args.workdir.mkdir(parents=True)
  extra = [f"--config.train.steps={args.steps}", "--config.train.checkpoint_every=3",
           "--config.train.eval_every=10", "--config.train.keep_checkpoints=2"]
  ref, work = args.workdir / "reference", args.workdir / "killed"
  t0 = time.time()
  assert run(train_cmd(ref, *extra), args.workdir / "reference.log", timeout=3600) == 0
  print(f"reference run: {time.time() - t0:.0f} s")
  for k in range(args.kills):
    log = args.workdir / f"kill-{k}.log"
    proc = subprocess.Popen(train_cmd(work, *extra), cwd=ROOT, env=clean_env(),
                            stdout=open(log, "w"), stderr=subprocess.STDOUT)
    delay = rng.uniform(2.0, 12.0)
    try:
      proc.wait(timeout=delay)
      print(f"round {k}: finished before the kill ({delay:.1f} s)")
      break
    except subprocess.TimeoutExpired:
      proc.send_signal(signal.SIGKILL)
      proc.wait()
    resumed = [line for line in read_log(log).splitlines() if line.startswith("resumed from")]
    print(f"round {k}: killed after {delay:.1f} s; {resumed[0] if resumed else 'started fresh'}")
  assert run(train_cmd(work, *extra), args.workdir / "final.log", timeout=3600) == 0
  for a, b in zip(final_params(ref)[1], final_params(work)[1]):
    if not (a == b).all():
      print("FAILED: parameters differ from the uninterrupted run")
      return 1
  print(f"OK: {args.kills} kills, final parameters equal the uninterrupted run's")
  return 0


if __name__ == "__main__":
  sys.exit(main())
