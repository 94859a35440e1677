"""TPU VMs and pod slices for musiclm-jax: create, set up, preflight, launch, logs, stop, delete.

    python tpu_scripts/tpu.py preflight --accelerator v5e-16 --gin_file=models/semantic_stage/paper.gin
    python tpu_scripts/tpu.py create    --name mlm --zone us-west4-a --project P --accelerator v5e-16 \\
                                        [--queued] [--spot]
    python tpu_scripts/tpu.py setup     --name mlm --zone us-west4-a --project P --accelerator v5e-16 \\
                                        --package dist/musiclm_jax-0.1.0-py3-none-any.whl [--no_deps]
    python tpu_scripts/tpu.py launch    --name mlm ... --gin_file=experiments/X.gin --model_dir gs://bucket/runs/x \\
                                        [--gin=KEY=VALUE ...]
    python tpu_scripts/tpu.py logs      --name mlm ... [--worker 0] [--lines 200] [--no_follow]
    python tpu_scripts/tpu.py stop      --name mlm ...
    python tpu_scripts/tpu.py delete    --name mlm ... [--queued]

What each command does (`...` is --name, --zone and --project):

  preflight  Runs `musiclm aot` on this machine (no TPU needed): compiles the train step for the
             slice's topology and mesh with the real TPU compiler (libtpu) and fails before
             anything is rented if the step does not fit in a chip's memory.
  create     `gcloud compute tpus tpu-vm create` (or, with --queued, `queued-resources create`,
             which waits in a queue for capacity) with the accelerator's type and runtime image.
  setup      Copies the wheel (`pip wheel --no-deps -w dist .`) to every worker's home, then on
             every worker: installs uv for the user (`python3 -m pip install --user uv`; the
             runtime images ship Python 3.10 and the package needs 3.11), makes a Python 3.11
             virtualenv ~/musiclm-venv with it (`uv venv --clear --python 3.11`: uv fetches a
             3.11 interpreter when the image has none) and installs the wheel with the `[tpu]`
             extra (jax[tpu] + libtpu) into it. --no_deps installs the package alone, for images
             that already carry the dependencies (e.g. on PYTHONPATH).
  launch     On every worker: refuses if a job started by `launch` is still running there, else
             starts ~/musiclm-venv/bin/musiclm train (by its absolute path: the non-interactive
             ssh shell has no venv on its PATH) in the background in a session of its own (it
             outlives the ssh session), its output in ~/musiclm_train.log and its process id in
             ~/musiclm_train.pid. The command line is `musiclm train --gin_file=F ...
             --gin.MODEL_DIR="D" --gin.FSDP_PARALLELISM=n --gin.MODEL_PARALLELISM=m --gin.K=V ...`:
             the slice's recommended mesh first, then the user's --gin bindings, so that they
             win (gin: the last binding of a name wins), e.g. --gin=FSDP_PARALLELISM=8.
             `musiclm train` on each worker joins the others through jax.distributed (worker id
             and host list from the TPU VM's environment), reads its own data shard, and resumes
             from the last checkpoint in MODEL_DIR if there is one.
  logs       Shows worker --worker's ~/musiclm_train.log: the last --lines lines, then follows it
             (tail -F; Ctrl-C ends it) unless --no_follow.
  stop       On every worker: sends SIGTERM to the process group of the job in ~/musiclm_train.pid
             and waits up to STOP_TIMEOUT_S (180 s) for it to exit. `musiclm train` treats
             SIGTERM as a request to save and stop (on several hosts through jax.distributed's
             preemption service: every host reaches the same step), so nothing since the last
             periodic checkpoint is lost. A job still running after the timeout gets
             SIGKILL (a relaunch then resumes from the last complete checkpoint: saves are
             atomic). Removes the pid file; a worker whose job already ended (or that never
             launched one) says so and succeeds.
  delete     `gcloud compute tpus tpu-vm delete` (or `queued-resources delete --force`, which
             deletes the TPU VM too) without a prompt.

Every command takes --dry_run: it prints the exact commands (one per line, shell-quoted) and
runs nothing. Without it each command is printed, then run; the first failure stops the script
with that command's exit status. Flags must be spelled out (no abbreviations: `--dry` is an
error, not a dry run). Only the standard library: it runs on a laptop with gcloud.

A pod slice has several hosts: `setup`, `launch` and `stop` run on all of them at once
(`gcloud ... ssh --worker=all`, which fails if any worker fails).
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import subprocess
import sys
from typing import Optional, Sequence


@dataclasses.dataclass(frozen=True)
class Accelerator:
    """A slice: gcloud's accelerator type and runtime image, the topology `musiclm aot` compiles
    for, chips and hosts, and the mesh we recommend (ici_mesh_shape = (data, fsdp, model))."""

    gcloud_type: str
    runtime_version: str
    topology: str
    chips: int
    hosts: int
    mesh: tuple[int, int, int]


# Multi-host slices have 4 chips per host (v4-32: 4 hosts; v5e-16 / v6e-16: 4 hosts).
# The recommended mesh shards parameters over every chip (fsdp) and keeps data parallelism at 1
# within a slice: at equal global batch it has the same FLOPs as data parallelism and about
# half the memory per chip (paper semantic stage on 4 chips: 5.5-6.8 GiB against 12.3-13.4;
# README's `musiclm aot` table), which leaves room for a larger batch.
ACCELERATORS = {
    "v4-8": Accelerator("v4-8", "tpu-ubuntu2204-base", "v4:2x2x1", 4, 1, (1, 4, 1)),
    "v4-32": Accelerator("v4-32", "tpu-ubuntu2204-base", "v4:2x2x4", 16, 4, (1, 16, 1)),
    "v5e-4": Accelerator("v5litepod-4", "v2-alpha-tpuv5-lite", "v5e:2x2", 4, 1, (1, 4, 1)),
    "v5e-16": Accelerator("v5litepod-16", "v2-alpha-tpuv5-lite", "v5e:4x4", 16, 4, (1, 16, 1)),
    "v5p-8": Accelerator("v5p-8", "v2-alpha-tpuv5", "v5p:2x2x1", 4, 1, (1, 4, 1)),
    "v6e-4": Accelerator("v6e-4", "v2-alpha-tpuv6e", "v6e:2x2", 4, 1, (1, 4, 1)),
    "v6e-16": Accelerator("v6e-16", "v2-alpha-tpuv6e", "v6e:4x4", 16, 4, (1, 16, 1)),
}
# On each worker, relative to its home directory (the ssh shell's working directory).
VENV = "musiclm-venv"
LOG_FILE = "musiclm_train.log"
PID_FILE = "musiclm_train.pid"
STOP_TIMEOUT_S = 180  # a SIGTERMed multi-host job saves a checkpoint first

# Shell snippets run on every worker (bash, non-interactive, in the home directory). No single
# quotes in them, so that the printed ssh command reads cleanly.
# `running`: the pid file names a live musiclm process (not a reused pid, not a zombie: a
# zombie's cmdline is empty).
_RUNNING = (
    f"running() {{ [ -s {PID_FILE} ] && pid=$(cat {PID_FILE}) && kill -0 $pid 2>/dev/null"
    f" && grep -qa musiclm /proc/$pid/cmdline; }}"
)
_STOP = (
    f"{_RUNNING}; "
    f'if ! running; then echo "no musiclm job running on $(hostname) (none launched, or it ended)"; '
    f"rm -f {PID_FILE}; exit 0; fi; "
    # setsid made the job its process group's leader: the group holds anything it started.
    f"kill -TERM -- -$pid 2>/dev/null || kill -TERM $pid; "
    f"for i in $(seq {2 * STOP_TIMEOUT_S}); do running || break; sleep 0.5; done; "
    f'if running; then echo "job $pid still runs {STOP_TIMEOUT_S} s after SIGTERM: SIGKILL"; '
    f"kill -KILL -- -$pid 2>/dev/null || kill -KILL $pid; "
    f"for i in $(seq 20); do running || break; sleep 0.5; done; fi; "
    f'if running; then echo "job $pid on $(hostname) did not stop"; exit 1; fi; '
    f'rm -f {PID_FILE}; echo "stopped musiclm job $pid on $(hostname)"'
)


def _remote_quote(word: str) -> str:
    """`word` as one word for the remote shell, in double quotes when it needs quoting (gin's string
    literals use single quotes, which shlex.quote would turn into an unreadable nest)."""
    if shlex.quote(word) == word:
        return word
    return '"' + "".join("\\" + c if c in '"\\$`' else c for c in word) + '"'


def accelerator(name: str) -> Accelerator:
    if name not in ACCELERATORS:
        raise ValueError(f"unknown accelerator {name!r}; known: {', '.join(ACCELERATORS)}")
    return ACCELERATORS[name]


def _where(args) -> list[str]:
    out = [f"--zone={args.zone}"]
    if args.project:
        out.append(f"--project={args.project}")
    return out


def _ssh(args, command: str, worker: str = "all") -> list[str]:
    return [
        "gcloud",
        "compute",
        "tpus",
        "tpu-vm",
        "ssh",
        args.name,
        *_where(args),
        f"--worker={worker}",
        f"--command={command}",
    ]


def _gin_flags(args, before_user: Sequence[str] = ()) -> list[str]:
    """--gin_file flags, then `before_user` bindings, then the user's --gin bindings (last: they win)."""
    return [f"--gin_file={f}" for f in args.gin_file] + list(before_user) + [f"--gin.{b}" for b in args.gin]


def preflight_commands(args) -> list[list[str]]:
    """`musiclm aot` for the slice's topology, on this machine (no TPU needed)."""
    if not args.gin_file:
        raise ValueError("preflight needs --gin_file (the model or experiment to compile)")
    acc = accelerator(args.accelerator)
    _, fsdp, model = acc.mesh  # the mesh `launch` trains with
    mesh = [f"--gin.FSDP_PARALLELISM={fsdp}", f"--gin.MODEL_PARALLELISM={model}"]
    return [["musiclm", "aot", *_gin_flags(args, mesh), f"--topology={acc.topology}"]]


def create_commands(args) -> list[list[str]]:
    acc = accelerator(args.accelerator)
    if args.queued:
        cmd = [
            "gcloud",
            "compute",
            "tpus",
            "queued-resources",
            "create",
            args.name,
            f"--node-id={args.name}",
            *_where(args),
            f"--accelerator-type={acc.gcloud_type}",
            f"--runtime-version={acc.runtime_version}",
        ]
    else:
        cmd = [
            "gcloud",
            "compute",
            "tpus",
            "tpu-vm",
            "create",
            args.name,
            *_where(args),
            f"--accelerator-type={acc.gcloud_type}",
            f"--version={acc.runtime_version}",
        ]
    return [cmd + (["--spot"] if args.spot else [])]


def setup_commands(args) -> list[list[str]]:
    """Copies the wheel to every worker, then installs uv, makes the Python 3.11 venv and installs
    the wheel (with the TPU extra, or alone with --no_deps) into it."""
    if not args.package:
        raise ValueError("setup needs --package (a wheel: pip wheel --no-deps -w dist .)")
    wheel = args.package.rsplit("/", 1)[-1]
    if not wheel.endswith(".whl") or any(c in wheel for c in "\"'\\$` "):
        raise ValueError(f"--package must be a wheel (.whl) without quotes, spaces or '$' in its name: {wheel!r}")
    scp = [
        "gcloud",
        "compute",
        "tpus",
        "tpu-vm",
        "scp",
        args.package,
        f"{args.name}:{wheel}",
        *_where(args),
        "--worker=all",
    ]
    # `python3 -m uv` finds uv's binary in ~/.local/bin, which the ssh shell has no PATH to.
    requirement = f'"{wheel}"' if args.no_deps else f'"{wheel}[tpu]"'
    install = " && ".join(
        [
            "python3 -m pip install --user uv",
            f"python3 -m uv venv --clear --python 3.11 ~/{VENV}",
            f"python3 -m uv pip install --python ~/{VENV}/bin/python{' --no-deps' if args.no_deps else ''} "
            f"--reinstall-package musiclm-jax {requirement}",
        ]
    )
    return [scp, _ssh(args, install)]


def launch_commands(args) -> list[list[str]]:
    """`musiclm train` on every worker in the background (survives the ssh session), its log in
    ~/musiclm_train.log and its pid in ~/musiclm_train.pid; the slice's recommended mesh unless
    the user's --gin bindings (which come last) override it."""
    if not args.gin_file or not args.model_dir:
        raise ValueError("launch needs --gin_file and --model_dir (a gs:// path every host can write)")
    acc = accelerator(args.accelerator)
    _, fsdp, model = acc.mesh
    if any(c in args.model_dir for c in "\"'\\$` "):
        raise ValueError(f"--model_dir must not contain quotes, spaces, '$' or backslashes: {args.model_dir!r}")
    # Double quotes escaped for the remote shell: gin gets a string literal, and the --command
    # argument holds no single quote (so it prints readably).
    ours = [
        f'--gin.MODEL_DIR=\\"{args.model_dir}\\"',
        f"--gin.FSDP_PARALLELISM={fsdp}",
        f"--gin.MODEL_PARALLELISM={model}",
    ]
    flags = [f if f in ours else _remote_quote(f) for f in _gin_flags(args, ours)]
    train = " ".join([f"~/{VENV}/bin/musiclm", "train", *flags])
    remote = (
        f"{_RUNNING}; "
        f'if running; then echo "a musiclm job is running on $(hostname) (pid $pid): stop it first"; exit 1; fi; '
        f"nohup setsid {train} > {LOG_FILE} 2>&1 < /dev/null & echo $! > {PID_FILE}; "
        f'echo "started musiclm train on $(hostname): pid $(cat {PID_FILE}), log ~/{LOG_FILE}"'
    )
    return [_ssh(args, remote)]


def logs_commands(args) -> list[list[str]]:
    if args.lines < 0:
        raise ValueError(f"--lines must be >= 0, got {args.lines}")
    tail = f"tail -n {args.lines} {LOG_FILE}" if args.no_follow else f"tail -n {args.lines} -F {LOG_FILE}"
    return [_ssh(args, tail, worker=str(args.worker))]


def stop_commands(args) -> list[list[str]]:
    return [_ssh(args, _STOP)]


def delete_commands(args) -> list[list[str]]:
    if args.queued:
        return [
            ["gcloud", "compute", "tpus", "queued-resources", "delete", args.name, *_where(args), "--force", "--quiet"]
        ]
    return [["gcloud", "compute", "tpus", "tpu-vm", "delete", args.name, *_where(args), "--quiet"]]


COMMANDS = {
    "preflight": preflight_commands,
    "create": create_commands,
    "setup": setup_commands,
    "launch": launch_commands,
    "logs": logs_commands,
    "stop": stop_commands,
    "delete": delete_commands,
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter, allow_abbrev=False
    )
    p.add_argument("command", choices=list(COMMANDS))
    p.add_argument("--accelerator", default="v5e-16", help="slice: " + ", ".join(ACCELERATORS))
    p.add_argument("--name", help="TPU VM / queued resource name")
    p.add_argument("--zone", help="e.g. us-west4-a (where the accelerator is offered)")
    p.add_argument("--project", help="GCP project (default: gcloud's configured one)")
    p.add_argument("--queued", action="store_true", help="create/delete: a queued resource instead of a TPU VM")
    p.add_argument("--spot", action="store_true", help="create: spot capacity")
    p.add_argument("--package", help="setup: the musiclm-jax wheel to install on every worker")
    p.add_argument(
        "--no_deps",
        action="store_true",
        help="setup: install the package alone, not its dependencies (for images that carry them)",
    )
    p.add_argument("--gin_file", action="append", default=[], help="preflight/launch: gin file (repeatable)")
    p.add_argument(
        "--gin",
        action="append",
        default=[],
        help="preflight/launch: a binding KEY=VALUE (repeatable); last on the command line, so it\n"
        "overrides the script's own (mesh, MODEL_DIR)",
    )
    p.add_argument("--model_dir", help="launch: MODEL_DIR (gs://...)")
    p.add_argument("--worker", default="0", help="logs: which worker's log")
    p.add_argument("--lines", type=int, default=200, help="logs: how many lines of the log to show first")
    p.add_argument("--no_follow", action="store_true", help="logs: show the last --lines lines and exit")
    p.add_argument("--dry_run", action="store_true", help="print the commands, run nothing")
    return p


def _commands(args: argparse.Namespace) -> list[list[str]]:
    accelerator(args.accelerator)
    if args.command != "preflight":
        missing = [f"--{k}" for k in ("name", "zone") if not getattr(args, k)]
        if missing:
            raise ValueError(f"{args.command} needs {' and '.join(missing)}")
    return COMMANDS[args.command](args)


def commands(argv: Sequence[str]) -> list[list[str]]:
    """The commands a command line would run (raises ValueError for bad arguments; argparse exits
    with status 2 for unknown or abbreviated flags)."""
    return _commands(parser().parse_args(argv))


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    try:
        cmds = _commands(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for cmd in cmds:
        print(shlex.join(cmd), flush=True)
        if not args.dry_run:
            status = subprocess.call(cmd)
            if status != 0:
                return status
    return 0


if __name__ == "__main__":
    sys.exit(main())
