"""Soak test: kill training at random moments, restart, repeat; the result must equal an
uninterrupted run. Not collected by pytest (minutes); run it by hand:

    python tests/soak.py --kills 20 --steps 60 [--seed 0] [--workdir /tmp/soak]
    python tests/soak.py --processes 2 --kills 10 --steps 60     # 2 processes x 2 CPU devices

Each round starts `seqtrain train` on the same workdir and SIGKILLs it after a random
delay (often inside a checkpoint save: checkpoint_every=3); a final run finishes it.
With --processes N the job runs under launch/local.py and each round SIGKILLs one of
its N processes, chosen at random (the launcher then stops the others).
Exit 0 when the final parameters equal the reference run's bit for bit.
"""
import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from runs import ROOT, clean_env, final_params, read_log, run, train_cmd  # noqa: E402


def _children(pid: int) -> list[int]:
  """The direct child processes of ``pid`` (Linux /proc)."""
  out = []
  for stat in Path("/proc").glob("[0-9]*/stat"):
    try:
      fields = stat.read_text().rsplit(")", 1)[1].split()
    except OSError:
      continue
    if int(fields[1]) == pid:
      out.append(int(stat.parent.name))
  return out


def _launcher(cmd, processes: int, log_dir: Path) -> list[str]:
  return [sys.executable, str(ROOT / "launch" / "local.py"), "-n", str(processes),
          "--cpu-devices", "2", "--log-dir", str(log_dir), "--grace", "5", "--quiet", "--", *cmd]


def main() -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--processes", type=int, default=1)
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
  multi = args.processes > 1

  def command(workdir, name):
    cmd = train_cmd(workdir, *extra)
    return _launcher(cmd, args.processes, args.workdir / f"{name}-logs") if multi else cmd

  def log_of(name):   # process 0's output
    return args.workdir / (f"{name}-logs/process_0.log" if multi else f"{name}.log")

  t0 = time.time()
  assert run(command(ref, "reference"), args.workdir / "reference.log", timeout=3600) == 0
  print(f"reference run: {time.time() - t0:.0f} s")
  kills = 0
  for k in range(args.kills):
    name = f"kill-{k}"
    proc = subprocess.Popen(command(work, name), cwd=ROOT, env=clean_env(),
                            stdout=open(args.workdir / f"{name}.log", "w"),
                            stderr=subprocess.STDOUT)
    delay = rng.uniform(2.0, 12.0)
    try:
      proc.wait(timeout=delay)
      print(f"round {k}: finished before the kill ({delay:.1f} s)")
      break
    except subprocess.TimeoutExpired:
      victims = sorted(_children(proc.pid)) if multi else [proc.pid]
      victim = rng.randrange(len(victims)) if victims else None
      if victim is not None:
        os.kill(victims[victim], signal.SIGKILL)
        kills += 1
      code = proc.wait(timeout=120)
    resumed = [line for line in read_log(log_of(name)).splitlines()
               if line.startswith("resumed from")]
    who = f"process {victim} of {len(victims)}" if multi else "the process"
    print(f"round {k}: SIGKILL to {who} after {delay:.1f} s (exit {code}); "
          f"{resumed[0] if resumed else 'started fresh'}")
  assert run(command(work, "final"), args.workdir / "final.log", timeout=3600) == 0
  for a, b in zip(final_params(ref)[1], final_params(work)[1]):
    if not (a == b).all():
      print("FAILED: parameters differ from the uninterrupted run")
      return 1
  print(f"OK: {kills} kills, final parameters equal the uninterrupted run's")
  return 0


if __name__ == "__main__":
  sys.exit(main())
