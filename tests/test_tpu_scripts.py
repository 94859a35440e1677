"""tpu_scripts/tpu.py: the exact gcloud / musiclm commands each step would run (dry run), for a
v5e-16 (4 hosts) and a v4-32 (4 hosts) slice, and clear errors for missing arguments; then the
commands really run against a fake gcloud (tests/fake_gcloud/gcloud: TPU VMs as folders, ssh as
one local `bash -c` per worker): create/describe/delete, launch/logs/stop of a stand-in job, and
(slow) the whole path with a real wheel and a real two-worker `musiclm train` on localhost."""

import glob
import importlib.util
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time

import pytest

_HERE = os.path.dirname(os.path.abspath(__file__))
_REPO = os.path.dirname(_HERE)
_PATH = os.path.join(_REPO, "tpu_scripts", "tpu.py")
_FAKE_GCLOUD_DIR = os.path.join(_HERE, "fake_gcloud")
_spec = importlib.util.spec_from_file_location("tpu_scripts_tpu", _PATH)
tpu = sys.modules["tpu_scripts_tpu"] = importlib.util.module_from_spec(_spec)  # dataclasses look it up
_spec.loader.exec_module(tpu)

WHERE = ["--name=mlm", "--zone=us-west4-a", "--project=proj"]


def _run(argv):
    return [shlex.join(c) for c in tpu.commands(argv)]


def _remote(cmd, start):
    """The `; `-separated part of a `gcloud ... ssh` command's --command that starts with `start`."""
    assert cmd[4] == "ssh" and cmd[-1].startswith("--command=")
    [part] = [p for p in cmd[-1].removeprefix("--command=").split("; ") if p.startswith(start)]
    return part


@pytest.mark.parametrize(
    "acc, gcloud_type, runtime, topology, fsdp",
    [
        ("v5e-16", "v5litepod-16", "v2-alpha-tpuv5-lite", "v5e:4x4", 16),
        ("v4-32", "v4-32", "tpu-ubuntu2204-base", "v4:2x2x4", 16),
    ],
)
def test_commands_for_a_pod_slice(acc, gcloud_type, runtime, topology, fsdp):
    assert _run(["preflight", f"--accelerator={acc}", "--gin_file=models/semantic_stage/paper.gin"]) == [
        f"musiclm aot --gin_file=models/semantic_stage/paper.gin --gin.FSDP_PARALLELISM={fsdp} "
        f"--gin.MODEL_PARALLELISM=1 --topology={topology}"
    ]  # the mesh launch trains with
    assert _run(["create", f"--accelerator={acc}", *WHERE]) == [
        f"gcloud compute tpus tpu-vm create mlm --zone=us-west4-a --project=proj --accelerator-type={gcloud_type} "
        f"--version={runtime}"
    ]
    assert _run(["create", f"--accelerator={acc}", "--queued", "--spot", *WHERE]) == [
        f"gcloud compute tpus queued-resources create mlm --node-id=mlm --zone=us-west4-a --project=proj "
        f"--accelerator-type={gcloud_type} --runtime-version={runtime} --spot"
    ]
    wheel = "dist/musiclm_jax-0.1.0-py3-none-any.whl"
    assert _run(["setup", f"--accelerator={acc}", f"--package={wheel}", *WHERE]) == [
        f"gcloud compute tpus tpu-vm scp {wheel} mlm:musiclm_jax-0.1.0-py3-none-any.whl --zone=us-west4-a "
        "--project=proj --worker=all",
        "gcloud compute tpus tpu-vm ssh mlm --zone=us-west4-a --project=proj --worker=all '--command="
        "python3 -m pip install --user uv && python3 -m uv venv --clear --python 3.11 ~/musiclm-venv && "
        "python3 -m uv pip install --python ~/musiclm-venv/bin/python --reinstall-package musiclm-jax "
        '"musiclm_jax-0.1.0-py3-none-any.whl[tpu]"\'',
    ]
    assert _run(["setup", f"--accelerator={acc}", f"--package={wheel}", "--no_deps", *WHERE])[1].endswith(
        '--no-deps --reinstall-package musiclm-jax "musiclm_jax-0.1.0-py3-none-any.whl"\''
    )  # the package alone: no [tpu] extra, no dependencies
    [launch] = tpu.commands(
        [
            "launch",
            f"--accelerator={acc}",
            "--gin_file=experiments/x.gin",
            "--gin=TRAIN_STEPS=10",
            "--gin=FSDP_PARALLELISM=8",
            "--model_dir=gs://bucket/runs/x",
            *WHERE,
        ]
    )
    assert launch[:9] == [
        "gcloud",
        "compute",
        "tpus",
        "tpu-vm",
        "ssh",
        "mlm",
        "--zone=us-west4-a",
        "--project=proj",
        "--worker=all",
    ]
    # What every worker's shell runs: unless a job runs already, the venv's musiclm by its absolute
    # path, in the background in a session of its own, its pid recorded; the user's --gin last.
    refuse = 'if running; then echo "a musiclm job is running on $(hostname) (pid $pid): stop it first"; exit 1; fi'
    assert refuse in launch[-1]
    assert shlex.split(_remote(launch, "nohup")) == [
        "nohup",
        "setsid",
        "~/musiclm-venv/bin/musiclm",
        "train",
        "--gin_file=experiments/x.gin",
        '--gin.MODEL_DIR="gs://bucket/runs/x"',
        f"--gin.FSDP_PARALLELISM={fsdp}",
        "--gin.MODEL_PARALLELISM=1",
        "--gin.TRAIN_STEPS=10",
        "--gin.FSDP_PARALLELISM=8",  # after the slice's: gin's last binding wins
        ">",
        "musiclm_train.log",
        "2>&1",
        "<",
        "/dev/null",
        "&",
        "echo",
        "$!",
        ">",
        "musiclm_train.pid",
    ]
    assert _run(["logs", *WHERE]) == [
        "gcloud compute tpus tpu-vm ssh mlm --zone=us-west4-a --project=proj --worker=0 "
        "'--command=tail -n 200 -F musiclm_train.log'"
    ]
    assert _run(["logs", "--worker=1", "--lines=5", "--no_follow", *WHERE])[0].endswith(
        "--worker=1 '--command=tail -n 5 musiclm_train.log'"
    )
    [stop] = tpu.commands(["stop", *WHERE])
    assert "pkill" not in stop[-1] and "kill -TERM -- -$pid" in stop[-1]
    assert _run(["delete", "--queued", *WHERE]) == [
        "gcloud compute tpus queued-resources delete mlm --zone=us-west4-a --project=proj --force --quiet"
    ]


def test_user_gin_values_reach_the_remote_shell_as_one_word():
    [launch] = tpu.commands(
        ["launch", "--gin_file=x.gin", "--gin=RUN_NAME='a b'", '--gin=NOTE="$HOME`x`"', "--model_dir=/m", *WHERE]
    )
    words = _remote(launch, "nohup").split(" train ", 1)[1].split(" > ")[0]
    printed = subprocess.run(["bash", "-c", f"printf '%s\\n' {words}"], capture_output=True, text=True, check=True)
    assert printed.stdout.splitlines()[-2:] == ["--gin.RUN_NAME='a b'", '--gin.NOTE="$HOME`x`"']


def test_dry_run_prints_and_runs_nothing(capsys, monkeypatch):
    monkeypatch.setattr(tpu.subprocess, "call", lambda cmd: pytest.fail(f"ran {cmd}"))
    assert tpu.main(["delete", *WHERE, "--dry_run"]) == 0
    assert capsys.readouterr().out == "gcloud compute tpus tpu-vm delete mlm --zone=us-west4-a --project=proj --quiet\n"


def test_abbreviated_flags_are_refused(capsys, monkeypatch):
    monkeypatch.setattr(tpu.subprocess, "call", lambda cmd: pytest.fail(f"ran {cmd}"))
    for flag in ("--dry", "--acc=v4-8"):
        with pytest.raises(SystemExit) as e:
            tpu.main(["delete", *WHERE, flag])
        assert e.value.code == 2
        assert f"unrecognized arguments: {flag}" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["create", "--name=mlm"], "needs --zone"),
        (["create", "--accelerator=v9-1", *WHERE], "unknown accelerator"),
        (["setup", *WHERE], "--package"),
        (["setup", *WHERE, "--package=dist/musiclm.tar.gz"], "must be a wheel"),
        (["launch", *WHERE, "--gin_file=x.gin"], "--model_dir"),
        (["launch", *WHERE, "--gin_file=x.gin", "--model_dir=gs://b/it's"], "quotes"),
        (["logs", *WHERE, "--lines=-1"], "--lines"),
        (["preflight"], "--gin_file"),
    ],
)
def test_bad_arguments_are_clear_errors(argv, message, capsys):
    assert tpu.main([*argv, "--dry_run"]) == 2
    assert message in capsys.readouterr().err


# --- Real runs against the fake gcloud -------------------------------------------------------


@pytest.fixture
def gcloud(tmp_path):
    """The environment tpu.py runs in: the fake gcloud first on PATH, its state in tmp_path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FAKE_TPU_ENV_", "FAKE_GCLOUD_"))}
    env["PATH"] = _FAKE_GCLOUD_DIR + os.pathsep + env["PATH"]
    env["FAKE_GCLOUD_STATE"] = str(tmp_path / "gcloud")
    yield env
    # Whatever a failed test left running on the fake workers.
    for pid_file in glob.glob(os.path.join(env["FAKE_GCLOUD_STATE"], "*", "worker-*", "home", tpu.PID_FILE)):
        with open(pid_file) as f:
            pid = int(f.read())
        if _alive(pid):
            os.killpg(pid, signal.SIGKILL)


def _tpu(env, *argv, timeout=120):
    return subprocess.run(
        [sys.executable, _PATH, *argv], env=env, capture_output=True, text=True, timeout=timeout, cwd=_REPO
    )


def _gcloud(env, *argv):
    return subprocess.run(["gcloud", *argv], env=env, capture_output=True, text=True, timeout=60)


def _home(env, worker, name="mlm"):
    return os.path.join(env["FAKE_GCLOUD_STATE"], name, f"worker-{worker}", "home")


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended
    except FileNotFoundError:
        return False


def _job_pid(env, worker):
    with open(os.path.join(_home(env, worker), tpu.PID_FILE)) as f:
        return int(f.read())


def test_create_describe_delete(gcloud):
    where = ["--name=mlm", "--zone=us-west4-a", "--accelerator=v5e-16"]
    r = _tpu(gcloud, "create", *where)
    assert r.returncode == 0, r.stderr
    r = _gcloud(gcloud, "compute", "tpus", "tpu-vm", "describe", "mlm", "--zone=us-west4-a")
    assert r.returncode == 0 and "state: READY" in r.stdout and "workers: 4" in r.stdout
    assert _tpu(gcloud, "create", *where).returncode == 1  # ALREADY_EXISTS

    r = _tpu(gcloud, "delete", *where, "--dry")  # an abbreviation, not a dry run
    assert r.returncode == 2 and "unrecognized arguments: --dry" in r.stderr
    assert _gcloud(gcloud, "compute", "tpus", "tpu-vm", "describe", "mlm", "--zone=us-west4-a").returncode == 0

    assert _tpu(gcloud, "delete", *where).returncode == 0
    r = _gcloud(gcloud, "compute", "tpus", "tpu-vm", "describe", "mlm", "--zone=us-west4-a")
    assert r.returncode == 1 and "NOT_FOUND" in r.stderr
    r = _tpu(gcloud, "delete", *where)
    assert r.returncode == 1 and "NOT_FOUND" in r.stderr

    assert _tpu(gcloud, "create", *where, "--queued", "--spot").returncode == 0
    r = _gcloud(gcloud, "compute", "tpus", "queued-resources", "describe", "mlm", "--zone=us-west4-a")
    assert r.returncode == 0 and "state: ACTIVE" in r.stdout
    assert _tpu(gcloud, "delete", *where, "--queued").returncode == 0
    assert _gcloud(gcloud, "compute", "tpus", "tpu-vm", "describe", "mlm", "--zone=us-west4-a").returncode == 1


# A stand-in for the venv's musiclm: prints its arguments and worker, then a step a tenth of a second.
_FAKE_MUSICLM = """#!/bin/bash
echo "args: $*"
echo "worker $TPU_WORKER_ID of $TPU_WORKER_HOSTNAMES"
for i in $(seq 3000); do echo "step $i"; sleep 0.1; done
"""


def test_launch_logs_stop_on_every_worker(gcloud):
    """launch runs the venv's musiclm by its path on every worker (the ssh shell's PATH has no
    venv), the user's --gin last; it refuses to start a second job; logs shows the log; stop ends
    both jobs (and not itself) and succeeds again when nothing runs."""
    gcloud["FAKE_GCLOUD_WORKERS"] = "2"
    where = ["--name=mlm", "--zone=us-west4-a", "--accelerator=v5e-16"]
    assert _tpu(gcloud, "create", *where).returncode == 0
    for w in range(2):
        os.makedirs(os.path.join(_home(gcloud, w), "musiclm-venv", "bin"))
        path = os.path.join(_home(gcloud, w), "musiclm-venv", "bin", "musiclm")
        with open(path, "w") as f:
            f.write(_FAKE_MUSICLM)
        os.chmod(path, 0o755)

    launch = ["launch", *where, "--gin_file=experiments/x.gin", "--model_dir=/tmp/m", "--gin=FSDP_PARALLELISM=8"]
    r = _tpu(gcloud, *launch)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("] started musiclm train") == 2
    pids = [_job_pid(gcloud, w) for w in range(2)]
    assert all(_alive(p) for p in pids)

    r = _tpu(gcloud, *launch)  # a job runs: refused on every worker, nothing started
    assert r.returncode == 1 and r.stdout.count("] a musiclm job is running") == 2
    assert [_job_pid(gcloud, w) for w in range(2)] == pids

    deadline = time.time() + 30
    while "step 2" not in (r := _tpu(gcloud, "logs", *where, "--worker=1", "--lines=3", "--no_follow")).stdout:
        assert time.time() < deadline, r.stdout + r.stderr
        time.sleep(0.5)
    with open(os.path.join(_home(gcloud, 1), tpu.LOG_FILE)) as f:
        log = f.read()
    assert (
        'args: train --gin_file=experiments/x.gin --gin.MODEL_DIR="/tmp/m" --gin.FSDP_PARALLELISM=16 '
        "--gin.MODEL_PARALLELISM=1 --gin.FSDP_PARALLELISM=8\nworker 1 of localhost,localhost\n" in log
    )

    r = _tpu(gcloud, "stop", *where)
    assert r.returncode == 0, r.stdout + r.stderr
    for w, pid in enumerate(pids):
        assert f"[worker {w}] stopped musiclm job {pid}" in r.stdout
        assert not _alive(pid)
        assert not os.path.exists(os.path.join(_home(gcloud, w), tpu.PID_FILE))
    r = _tpu(gcloud, "stop", *where)  # nothing runs: says so, succeeds
    assert r.returncode == 0 and r.stdout.count("] no musiclm job running") == 2


# --- The whole path: wheel, setup, a real two-worker train, stop, resume (slow) ---------------


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """A wheel of this checkout, built from a copy of its sources (no build/ in the repo)."""
    src, dist = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("dist")
    for f in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy(os.path.join(_REPO, f), src)
    for d in ("musiclm_jax", "gin"):
        shutil.copytree(os.path.join(_REPO, d), src / d, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(dist), str(src)],
        check=True,
        timeout=300,
    )
    [whl] = os.listdir(dist)
    return str(dist / whl)


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _wait_for(what, ok, env, timeout, pids=()):
    """Polls ok() until it holds; fails with both workers' logs after `timeout` s or when one of
    `pids` (the jobs that should be running) has ended."""
    deadline = time.time() + timeout
    while not ok():
        dead = [p for p in pids if not _alive(p)]
        if time.time() > deadline or dead:
            logs = []
            for w in range(2):
                path = os.path.join(_home(env, w), tpu.LOG_FILE)
                if os.path.exists(path):
                    with open(path) as f:
                        logs.append(f"--- worker {w} log:\n{f.read()[-3000:]}")
            why = f"job {dead} ended" if dead else "timed out"
            pytest.fail(f"{why} waiting for {what}\n" + "\n".join(logs))
        time.sleep(1)


def _log(env, worker=0):
    path = os.path.join(_home(env, worker), tpu.LOG_FILE)
    if not os.path.exists(path):
        return ""
    with open(path) as f:
        return f.read()


def _checkpoints(model_dir):
    d = os.path.join(model_dir, "checkpoints")
    return sorted(int(s) for s in os.listdir(d) if s.isdigit()) if os.path.isdir(d) else []


@pytest.mark.slow
def test_setup_launch_stop_resume_on_two_workers(gcloud, wheel, tmp_path):
    """create a 2-worker slice, `setup --no_deps` (uv makes each worker's Python 3.11 venv; the
    dependencies come from this venv through PYTHONPATH, nothing is downloaded), launch a real
    `musiclm train` on both (jax.distributed on localhost, 4 CPU devices each; the user's
    --gin=FSDP_PARALLELISM=8 must beat the slice's 16), see progress and a checkpoint, stop both,
    and launch again: it resumes from the checkpoint and runs to its end."""
    gcloud.update(
        FAKE_GCLOUD_WORKERS="2",
        # The image's PATH: a Python 3.11 with pip (this venv's base), not this venv's bin.
        FAKE_TPU_ENV_PATH=os.path.join(sys.base_prefix, "bin") + ":/usr/bin:/bin",
        FAKE_TPU_ENV_PYTHONPATH=sysconfig.get_path("purelib"),
        FAKE_TPU_ENV_UV_OFFLINE="1",
        FAKE_TPU_ENV_UV_PYTHON_DOWNLOADS="never",
        FAKE_TPU_ENV_JAX_PLATFORMS="cpu",
        FAKE_TPU_ENV_XLA_FLAGS="--xla_force_host_platform_device_count=4",
        FAKE_TPU_ENV_MUSICLM_COORDINATOR_PORT=str(_free_port()),
    )
    where = ["--name=mlm", "--zone=us-west4-a", "--accelerator=v5e-16"]
    assert _tpu(gcloud, "create", *where).returncode == 0
    r = _gcloud(gcloud, "compute", "tpus", "tpu-vm", "ssh", "mlm", "--zone=z", "--worker=0", "--command=type musiclm")
    assert r.returncode != 0  # the ssh shell's PATH has no musiclm: launch must name the venv's

    r = _tpu(gcloud, "setup", *where, f"--package={wheel}", "--no_deps", timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    for w in range(2):
        python = os.path.join(_home(gcloud, w), "musiclm-venv", "bin", "python")
        version = subprocess.run([python, "--version"], capture_output=True, text=True, check=True).stdout
        assert version.startswith("Python 3.11")

    model_dir = str(tmp_path / "model")  # local, shared by both workers (a gs:// bucket on a pod)
    train = [
        "--gin_file=experiments/local_tiny.gin",
        f"--model_dir={model_dir}",
        "--gin=FSDP_PARALLELISM=8",  # 2 workers x 4 CPU devices, against v5e-16's 16
        "--gin=BATCH_SIZE_PER_DEVICE=1",
        "--gin=EVAL_PERIOD=0",
        "--gin=CHECKPOINT_PERIOD=10",
    ]
    r = _tpu(gcloud, "launch", *where, *train, "--gin=TRAIN_STEPS=10000")
    assert r.returncode == 0, r.stdout + r.stderr
    pids = [_job_pid(gcloud, w) for w in range(2)]
    _wait_for("a checkpoint", lambda: _checkpoints(model_dir), gcloud, timeout=150, pids=pids)
    assert "mesh {'data': 1, 'fsdp': 8, 'model': 1}" in _log(gcloud)

    r = _tpu(gcloud, "logs", *where, "--lines=3", "--no_follow")
    assert r.returncode == 0 and re.search(r"step \d+/10000", r.stdout), r.stdout

    r = _tpu(gcloud, "stop", *where, timeout=400)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("] stopped musiclm job") == 2
    assert not any(_alive(p) for p in pids)

    step = _checkpoints(model_dir)[-1]
    # SIGTERM is a preemption notice: both hosts saved the step they had reached, then exited.
    assert f"stopped at step {step} by SIGTERM" in _log(gcloud), _log(gcloud)[-3000:]
    assert not [line for line in r.stdout.splitlines() if line.startswith("[worker") and "still runs" in line]
    r = _tpu(gcloud, "launch", *where, *train, f"--gin=TRAIN_STEPS={step + 2}")
    assert r.returncode == 0, r.stdout + r.stderr
    pids = [_job_pid(gcloud, w) for w in range(2)]
    _wait_for("the resumed run's end", lambda: not any(_alive(p) for p in pids), gcloud, timeout=150)
    log = _log(gcloud)
    assert f"resumed from step {step} in" in log and f"step {step + 2}/{step + 2}" in log, log[-3000:]
    assert _checkpoints(model_dir)[-1] == step + 2

    r = _tpu(gcloud, "stop", *where)  # the job ended already: nothing to stop, success
    assert r.returncode == 0 and r.stdout.count("] no musiclm job running") == 2
    assert _tpu(gcloud, "delete", *where).returncode == 0
