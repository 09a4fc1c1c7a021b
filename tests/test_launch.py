"""launch/: the local multi-process launcher (run for real on tiny Python commands) and
the SLURM / Cloud TPU / Kubernetes scripts (syntax, plus their logic run against stub
srun / scontrol / scancel / gcloud / seqtrain commands). No JAX, no cluster."""
from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "launch"
BASH = shutil.which("bash")
needs_bash = pytest.mark.skipif(BASH is None, reason="bash not installed")


def _load_local():
  spec = importlib.util.spec_from_file_location("launch_local_under_test", LAUNCH / "local.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


local = _load_local()


def _py(code: str) -> list[str]:
  return [sys.executable, "-c", textwrap.dedent(code)]


def _wait_for(paths, timeout=15.0):
  deadline = time.monotonic() + timeout
  while not all(Path(p).exists() for p in paths):
    assert time.monotonic() < deadline, f"timed out waiting for {paths}"
    time.sleep(0.02)


def _gone(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return True
  return False


# ---- launch/local.py --------------------------------------------------------------

def test_local_sets_env_per_process_and_writes_logs(tmp_path, capsys):
  out = tmp_path / "out"
  out.mkdir()
  cmd = _py(f"""
      import json, os, sys
      env = {{k: v for k, v in os.environ.items() if k.startswith("SEQTRAIN_")}}
      env["EXTRA"] = os.environ.get("EXTRA")
      pid = env["SEQTRAIN_PROCESS_ID"]
      open(os.path.join({str(out)!r}, "env_" + pid + ".json"), "w").write(json.dumps(env))
      print("hello from", pid)
      print("[Gloo] Rank " + pid + " is connected to 1 peer ranks.", flush=True)
      print("warning from", pid, file=sys.stderr)
  """)
  logs = tmp_path / "logs"
  rc = local.launch_local(cmd, 2, cpu_devices=2, log_dir=logs, timeout=60,
                          env={"EXTRA": "x", "SEQTRAIN_DISTRIBUTED": "auto"})
  assert rc == 0
  envs = [json.loads((out / f"env_{i}.json").read_text()) for i in range(2)]
  assert [e["SEQTRAIN_PROCESS_ID"] for e in envs] == ["0", "1"]
  assert {e["SEQTRAIN_NUM_PROCESSES"] for e in envs} == {"2"}
  assert {e["SEQTRAIN_CPU_DEVICES"] for e in envs} == {"2"}
  assert {e["EXTRA"] for e in envs} == {"x"}
  assert all("SEQTRAIN_DISTRIBUTED" not in e for e in envs)  # explicit variables win
  coordinators = {e["SEQTRAIN_COORDINATOR"] for e in envs}
  assert len(coordinators) == 1
  host, port = coordinators.pop().rsplit(":", 1)
  assert host == "localhost" and 1024 <= int(port) <= 65535
  for i in range(2):
    text = (logs / f"process_{i}.log").read_text()
    assert f"hello from {i}" in text and f"warning from {i}" in text  # stdout + stderr
    assert "[Gloo] Rank" in text   # collectives' chatter: in the log, not on the console
  console = capsys.readouterr().out
  assert "[0] hello from 0" in console and "[0] warning from 0" in console
  assert "Gloo" not in console
  assert "hello from 1" not in console


def test_local_failure_returns_its_code_and_stops_the_others(tmp_path):
  pid_file = tmp_path / "pid_0"
  cmd = _py(f"""
      import os, sys, time
      if os.environ["SEQTRAIN_PROCESS_ID"] == "0":
          open({str(pid_file)!r} + ".tmp", "w").write(str(os.getpid()))
          os.rename({str(pid_file)!r} + ".tmp", {str(pid_file)!r})
          time.sleep(60)
      else:
          while not os.path.exists({str(pid_file)!r}):
              time.sleep(0.01)
          sys.exit(3)
  """)
  t0 = time.monotonic()
  rc = local.launch_local(cmd, 2, log_dir=tmp_path / "logs", timeout=60, grace=30, echo=False)
  assert rc == 3
  assert time.monotonic() - t0 < 15  # < grace: SIGTERM stopped it, not the SIGKILL after
  assert _gone(int(pid_file.read_text()))


def test_local_sigkills_a_process_that_ignores_sigterm(tmp_path):
  pid_file = tmp_path / "pid_0"
  cmd = _py(f"""
      import os, signal, sys, time
      if os.environ["SEQTRAIN_PROCESS_ID"] == "0":
          signal.signal(signal.SIGTERM, signal.SIG_IGN)
          open({str(pid_file)!r} + ".tmp", "w").write(str(os.getpid()))
          os.rename({str(pid_file)!r} + ".tmp", {str(pid_file)!r})
          time.sleep(60)
      while not os.path.exists({str(pid_file)!r}):
          time.sleep(0.01)
      sys.exit(5)
  """)
  t0 = time.monotonic()
  rc = local.launch_local(cmd, 2, log_dir=tmp_path / "logs", grace=0.5, echo=False)
  assert rc == 5
  assert time.monotonic() - t0 < 15
  assert _gone(int(pid_file.read_text()))


def test_local_timeout_returns_124(tmp_path):
  t0 = time.monotonic()
  rc = local.launch_local(_py("import time; time.sleep(60)"), 2, log_dir=tmp_path / "logs",
                          timeout=1.0, grace=2, echo=False)
  assert rc == 124
  assert time.monotonic() - t0 < 15


def test_local_forwards_sigterm_and_returns_0_when_processes_save_and_exit(tmp_path):
  """The CLI, end to end: SIGTERM to the launcher only (each process is in its own
  process group) reaches both processes, which 'checkpoint' and exit 0."""
  child = tmp_path / "child.py"
  child.write_text(textwrap.dedent(f"""
      import os, signal, sys, time
      i = os.environ["SEQTRAIN_PROCESS_ID"]
      def on_term(signum, frame):
          open(os.path.join({str(tmp_path)!r}, "saved_" + i), "w").write("checkpoint")
          sys.exit(0)
      signal.signal(signal.SIGTERM, on_term)
      open(os.path.join({str(tmp_path)!r}, "ready_" + i), "w").close()
      time.sleep(60)
      sys.exit(7)  # not reached when the signal arrives
  """))
  launcher = subprocess.Popen(
      [sys.executable, str(LAUNCH / "local.py"), "-n", "2", "--log-dir", str(tmp_path / "logs"),
       "--timeout", "60", "--", sys.executable, str(child)],
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
  try:
    _wait_for([tmp_path / "ready_0", tmp_path / "ready_1"])
    launcher.send_signal(signal.SIGTERM)
    out, _ = launcher.communicate(timeout=20)
  finally:
    if launcher.poll() is None:
      launcher.kill()
  assert launcher.returncode == 0, out.decode()
  assert (tmp_path / "saved_0").read_text() == "checkpoint"
  assert (tmp_path / "saved_1").read_text() == "checkpoint"


@pytest.mark.parametrize("argv, message", [
    (["-n", "2", "echo", "hi"], "after '--'"),
    (["-n", "0", "--", "echo"], "-n must be >= 1"),
    (["-n", "2", "--"], "no command"),
    (["-n", "2", "--timeout", "0", "--", "echo"], "--timeout must be > 0"),
    (["--", "echo"], "required: -n"),
])
def test_local_cli_usage_errors(argv, message, capsys):
  with pytest.raises(SystemExit) as exc:
    local.main(argv)
  assert exc.value.code == 2
  assert message in capsys.readouterr().err


def test_local_missing_command_returns_127(tmp_path):
  rc = local.launch_local([str(tmp_path / "no-such-program")], 2, log_dir=tmp_path, echo=False)
  assert rc == 127


# ---- launch/slurm.sbatch ----------------------------------------------------------

def _stub(bin_dir: Path, name: str, body: str):
  path = bin_dir / name
  path.write_text("#!/bin/bash\n" + textwrap.dedent(body))
  path.chmod(0o755)


@needs_bash
@pytest.mark.parametrize("script", ["slurm.sbatch", "tpu_vm.sh"])
def test_shell_scripts_parse(script):
  subprocess.run([BASH, "-n", str(LAUNCH / script)], check=True)
  assert os.access(LAUNCH / script, os.X_OK)


def test_sbatch_directives():
  text = (LAUNCH / "slurm.sbatch").read_text()
  directives = dict(re.findall(r"^#SBATCH --([\w-]+)(?:=(\S+))?", text, re.M))
  assert directives["ntasks-per-node"] == "1"
  assert int(directives["gpus-per-node"]) >= 1
  assert re.fullmatch(r"B:USR1@\d+", directives["signal"])
  assert "requeue" in directives
  assert directives["output"].startswith("logs/") and directives["error"].startswith("logs/")


@needs_bash
def test_sbatch_sets_seqtrain_env_per_task_and_requeues_on_time_limit_signal(tmp_path):
  """Runs the batch script with stub srun (2 tasks), scontrol and scancel: each task
  gets its SEQTRAIN_* variables; USR1 (the --signal warning) makes the script SIGTERM
  the tasks, wait for them to exit 0, then `scontrol requeue` the job."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  rec = tmp_path / "rec"
  rec.mkdir()
  _stub(bin_dir, "srun", """
      while [[ "$1" == --* ]]; do shift; done        # srun's own options
      for i in 0 1; do SLURM_PROCID=$i SLURM_LOCALID=0 "$@" & done
      wait
  """)
  _stub(bin_dir, "scontrol", f"""
      echo "$*" >> {rec}/scontrol
      [[ "$1 $2" == "show hostnames" ]] && printf 'gpu-a17\\ngpu-a18\\n'
      exit 0
  """)
  _stub(bin_dir, "scancel", f"""
      echo "$*" >> {rec}/scancel
      sig="${{1#--signal=}}"
      for f in {rec}/pid_*; do kill -s "$sig" "$(cat "$f")"; done
  """)
  _stub(bin_dir, "seqtrain", f"""
      i=$SEQTRAIN_PROCESS_ID
      env | grep '^SEQTRAIN_' | sort > {rec}/env_$i
      printf '%s\n' "$@" > {rec}/args_$i
      trap 'kill $! 2>/dev/null; echo saved > {rec}/saved_$i; exit 0' TERM
      echo $$ > {rec}/pid_$i.tmp && mv {rec}/pid_$i.tmp {rec}/pid_$i
      sleep 30 & wait
      exit 9
  """)
  env = {k: v for k, v in os.environ.items() if not k.startswith("SEQTRAIN_")}  # hermetic
  env = dict(env, PATH=f"{bin_dir}:{os.environ['PATH']}", SLURM_JOB_ID="4242",
             SLURM_JOB_NODELIST="gpu-a[17-18]", SLURM_NNODES="2", CONFIG="configs/x.py:tiny",
             WORKDIR=str(tmp_path / "work dir"), EXTRA_ARGS="--config.train.steps=7",
             VENV=str(tmp_path / "no-venv"))
  job = subprocess.Popen([BASH, str(LAUNCH / "slurm.sbatch")], env=env, cwd=tmp_path,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
  try:
    _wait_for([rec / "pid_0", rec / "pid_1"])
    job.send_signal(signal.SIGUSR1)
    out, _ = job.communicate(timeout=20)
  finally:
    if job.poll() is None:
      job.kill()
  out = out.decode()
  assert job.returncode == 0, out
  for i in range(2):
    env_i = dict(line.split("=", 1) for line in (rec / f"env_{i}").read_text().split())
    assert env_i == {"SEQTRAIN_COORDINATOR": f"gpu-a17:{20000 + 4242 % 20000}",
                     "SEQTRAIN_NUM_PROCESSES": "2", "SEQTRAIN_PROCESS_ID": str(i)}
    assert (rec / f"args_{i}").read_text().splitlines() == [
        "train", "--config", "configs/x.py:tiny", "--workdir", str(tmp_path / "work dir"),
        "--config.train.steps=7"]
    assert (rec / f"saved_{i}").read_text().strip() == "saved"
  assert (tmp_path / "work dir").is_dir()
  assert (rec / "scancel").read_text().split() == ["--signal=TERM", "4242"]
  assert "requeue 4242" in (rec / "scontrol").read_text()


@needs_bash
def test_sbatch_outside_slurm_prints_usage(tmp_path):
  env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
  r = subprocess.run([BASH, str(LAUNCH / "slurm.sbatch")], env=env, cwd=tmp_path,
                     capture_output=True, text=True)
  assert r.returncode == 2 and "usage: sbatch" in r.stderr


# ---- launch/tpu_vm.sh -------------------------------------------------------------

@needs_bash
def test_tpu_vm_usage():
  r = subprocess.run([BASH, str(LAUNCH / "tpu_vm.sh")], capture_output=True, text=True)
  assert r.returncode == 2 and "usage:" in r.stderr
  r = subprocess.run([BASH, str(LAUNCH / "tpu_vm.sh"), "train"], capture_output=True, text=True,
                     env={k: v for k, v in os.environ.items() if k != "TPU_NAME"})
  assert r.returncode == 2 and "TPU_NAME" in r.stderr


@needs_bash
def test_tpu_vm_runs_the_same_train_command_on_all_workers(tmp_path):
  """Stub gcloud records its arguments; the remote command it was given is then run
  here (HOME = a fake worker with a stub seqtrain) to check the quoting end to end."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  calls = tmp_path / "gcloud_calls.json"
  _stub(bin_dir, "gcloud", f"""
      exec {shlex.quote(sys.executable)} -c 'import json, sys; open(sys.argv[1], "a").write(json.dumps(sys.argv[2:]) + "\\n")' {calls} "$@"
  """)
  env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", TPU_NAME="tpu-1",
             ZONE="us-east5-a", PROJECT="proj", CONFIG="configs/x.py:big",
             WORKDIR="/mnt/runs/a b", EXTRA_ARGS="--config.train.steps=9 --config.x='q'")
  r = subprocess.run([BASH, str(LAUNCH / "tpu_vm.sh"), "train"], env=env, capture_output=True,
                     text=True)
  assert r.returncode == 0, r.stderr
  (argv,) = [json.loads(line) for line in calls.read_text().splitlines()]
  assert argv[:5] == ["compute", "tpus", "tpu-vm", "ssh", "tpu-1"]
  assert {"--zone=us-east5-a", "--project=proj", "--worker=all"} <= set(argv)
  (command,) = [a[len("--command="):] for a in argv if a.startswith("--command=")]

  worker = tmp_path / "worker"
  venv_bin = worker / "seqtrain" / ".venv" / "bin"
  venv_bin.mkdir(parents=True)
  _stub(venv_bin, "seqtrain", f"""
      {shlex.quote(sys.executable)} -c 'import json, os, sys; print(json.dumps([os.getcwd()] + sys.argv[1:]))' "$@"
  """)
  r = subprocess.run([BASH, "-c", command], env=dict(os.environ, HOME=str(worker)),
                     capture_output=True, text=True)
  assert r.returncode == 0, r.stderr
  cwd, *args = json.loads(r.stdout)
  assert Path(cwd) == worker / "seqtrain"
  assert args == ["train", "--config", "configs/x.py:big", "--workdir", "/mnt/runs/a b",
                  "--distributed", "auto", "--config.train.steps=9", "--config.x='q'"]


@needs_bash
def test_tpu_vm_install_command_parses(tmp_path):
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  calls = tmp_path / "calls"
  _stub(bin_dir, "gcloud", f"""
      for a in "$@"; do [[ "$a" == --command=* ]] && printf '%s\\0' "${{a#--command=}}" >> {calls}; done
      exit 0
  """)
  env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", TPU_NAME="tpu-1",
             GIT_URL="https://example.com/x/seqtrain.git", GIT_REF="v1")
  r = subprocess.run([BASH, str(LAUNCH / "tpu_vm.sh"), "install"], env=env, capture_output=True,
                     text=True)
  assert r.returncode == 0, r.stderr
  (command,) = [c for c in calls.read_text().split("\0") if c]
  # The command is `bash -c <quoted script>`: unquote it with bash itself (a stub
  # `bash` on PATH saves the script), then check the script's syntax.
  unquote = tmp_path / "unquote"
  unquote.mkdir()
  _stub(unquote, "bash", f'[ "$1" = -c ] && printf "%s" "$2" > {tmp_path}/script\n')
  subprocess.run([BASH, "-c", command], check=True,
                 env=dict(os.environ, PATH=f"{unquote}:{os.environ['PATH']}"))
  script = (tmp_path / "script").read_text()
  subprocess.run([BASH, "-n", "-c", script], check=True)
  assert "git clone --depth 1 'https://example.com/x/seqtrain.git'" in script
  assert "uv pip install" in script and "'jax[tpu]>=0.10.2,<0.12'" in script


# ---- launch/k8s-job.yaml ----------------------------------------------------------

def _k8s_docs():
  text = (LAUNCH / "k8s-job.yaml").read_text()
  import yaml  # in the test extra
  return [d for d in yaml.safe_load_all(text) if d]


def test_k8s_manifest_structure():
  docs = _k8s_docs()
  (svc,) = [d for d in docs if d["kind"] == "Service"]
  (job,) = [d for d in docs if d["kind"] == "Job"]
  assert job["apiVersion"] == "batch/v1" and svc["apiVersion"] == "v1"
  spec, pod = job["spec"], job["spec"]["template"]["spec"]
  name, svc_name = job["metadata"]["name"], svc["metadata"]["name"]
  assert spec["completionMode"] == "Indexed"
  assert spec["completions"] == spec["parallelism"] >= 2
  assert svc["spec"]["clusterIP"] == "None"
  assert svc["spec"]["selector"] == {"job-name": name}
  assert pod["subdomain"] == svc_name
  assert pod["restartPolicy"] == "Never"
  assert pod["terminationGracePeriodSeconds"] >= 120
  (container,) = pod["containers"]
  env = {e["name"]: e.get("value") for e in container["env"]}
  assert env["SEQTRAIN_COORDINATOR"] == f"{name}-0.{svc_name}:1234"
  assert env["SEQTRAIN_NUM_PROCESSES"] == str(spec["completions"])
  assert int(container["resources"]["limits"]["nvidia.com/gpu"]) >= 1
  mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
  volumes = {v["name"]: v for v in pod["volumes"]}
  assert env["WORKDIR"].startswith(mounts["runs"] + "/")
  assert "persistentVolumeClaim" in volumes["runs"]
  assert container["command"] == ["bash", "-c"]
  assert re.search(r"SEQTRAIN_PROCESS_ID=\"\$JOB_COMPLETION_INDEX\"", container["args"][0])


@needs_bash
@pytest.mark.parametrize("preempted", [False, True])
def test_k8s_wrapper_sets_process_id_and_reports_preemption(tmp_path, preempted):
  """The container's shell, run here with a stub seqtrain: process id from
  JOB_COMPLETION_INDEX; SIGTERM is passed on and the pod then exits 143 (not 0)."""
  (job,) = [d for d in _k8s_docs() if d["kind"] == "Job"]
  (container,) = job["spec"]["template"]["spec"]["containers"]
  script = container["args"][0]
  env = dict(os.environ)
  env.update({e["name"]: e["value"] for e in container["env"]})
  env.update(JOB_COMPLETION_INDEX="1", EXTRA_ARGS="--config.a=1 --config.b=2")
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  if preempted:  # "saves a checkpoint" on SIGTERM, then exits 0 like seqtrain
    tail = (f"trap 'kill $! 2>/dev/null; echo saved > {tmp_path}/saved; exit 0' TERM\n"
            f"touch {tmp_path}/ready\nsleep 30 & wait\nexit 9\n")
  else:
    tail = "exit 0\n"
  _stub(bin_dir, "seqtrain", f'echo "$SEQTRAIN_PROCESS_ID $*" > {tmp_path}/args\n' + tail)
  env["PATH"] = f"{bin_dir}:{env['PATH']}"
  pod = subprocess.Popen([BASH, "-c", script], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT)
  try:
    if preempted:
      _wait_for([tmp_path / "ready"])
      pod.send_signal(signal.SIGTERM)
    out, _ = pod.communicate(timeout=20)
  finally:
    if pod.poll() is None:
      pod.kill()
  assert (tmp_path / "args").read_text().split() == [
      "1", "train", "--config", env["CONFIG"], "--workdir", env["WORKDIR"], "--config.a=1",
      "--config.b=2"]
  if preempted:
    assert pod.returncode == 143, out.decode()
    assert (tmp_path / "saved").read_text().strip() == "saved"
  else:
    assert pod.returncode == 0, out.decode()


def test_wait_for_coordinator_says_so_and_gives_up_in_one_line():
  import socket
  from seqtrain.parallel.distributed import wait_for_coordinator
  lines = []
  with socket.socket() as server:          # something listening: no wait, no message
    server.bind(("127.0.0.1", 0))
    server.listen()
    wait_for_coordinator(f"127.0.0.1:{server.getsockname()[1]}", 5, say=lambda *a, **k:
                         lines.append(a[0]))
  assert lines == []
  with socket.socket() as s:               # a port nobody listens on
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  with pytest.raises(ValueError, match=rf"coordinator 127.0.0.1:{port} not reachable after 1 s"):
    wait_for_coordinator(f"127.0.0.1:{port}", 1, say=lambda *a, **k: lines.append(a[0]))
  assert lines == [f"waiting for coordinator 127.0.0.1:{port} (up to 1 s)"]
