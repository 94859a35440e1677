"""TPU VMs and pod slices for musiclm-jax: create, set up, preflight, launch, logs, stop, delete.

    python tpu_scripts/tpu.py preflight --accelerator v5e-16 --gin_file=models/semantic_stage/paper.gin
    python tpu_scripts/tpu.py create    --name mlm --zone us-west4-a --project P --accelerator v5e-16 \\
                                        [--queued] [--spot]
    python tpu_scripts/tpu.py setup     --name mlm --zone us-west4-a --project P --accelerator v5e-16 \\
                                        --package dist/musiclm_jax-0.1.0-py3-none-any.whl
    python tpu_scripts/tpu.py launch    --name mlm ... --gin_file=experiments/X.gin --model_dir gs://bucket/runs/x
    python tpu_scripts/tpu.py logs      --name mlm ...          (follows worker 0's log)
    python tpu_scripts/tpu.py stop      --name mlm ...          (stops the job on every worker)
    python tpu_scripts/tpu.py delete    --name mlm ... [--queued]

Every command takes --dry_run: it prints the exact commands (one per line, shell-quoted) and
runs nothing. Without it each command is printed, then run; the first failure stops the script
with that command's exit status. Only the standard library: it runs on a laptop with gcloud.

A pod slice has several hosts: `setup`, `launch` and `stop` run on all of them at once
(`gcloud ... ssh --worker=all`); `musiclm train` on each host joins the others through
`jax.distributed.initialize()` and reads its own data shard. The preflight compiles the train
step for the slice's topology with the real TPU compiler (`musiclm aot`, libtpu) on this
machine and fails before anything is rented if the step does not fit in a chip's memory.
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
LOG_FILE = "musiclm_train.log"


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


def _gin_flags(args) -> list[str]:
    return [f"--gin_file={f}" for f in args.gin_file] + [f"--gin.{b}" for b in args.gin]


def preflight_commands(args) -> list[list[str]]:
    """`musiclm aot` for the slice's topology, on this machine (no TPU needed)."""
    if not args.gin_file:
        raise ValueError("preflight needs --gin_file (the model or experiment to compile)")
    acc = accelerator(args.accelerator)
    _, fsdp, model = acc.mesh  # the mesh `launch` trains with
    return [
        [
            "musiclm",
            "aot",
            *_gin_flags(args),
            f"--topology={acc.topology}",
            f"--gin.FSDP_PARALLELISM={fsdp}",
            f"--gin.MODEL_PARALLELISM={model}",
        ]
    ]


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
    """Copies the package (a wheel built with `pip wheel --no-deps .`) to every worker and installs
    it with the TPU extra (jax[tpu] + libtpu)."""
    if not args.package:
        raise ValueError("setup needs --package (a wheel: pip wheel --no-deps -w dist .)")
    wheel = args.package.rsplit("/", 1)[-1]
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
    install = f'python3 -m pip install --upgrade pip && python3 -m pip install "{wheel}[tpu]"'
    return [scp, _ssh(args, install)]


def launch_commands(args) -> list[list[str]]:
    """`musiclm train` on every worker in the background (survives the ssh session), its log in
    ~/musiclm_train.log; the mesh is the slice's recommended one unless --gin overrides it."""
    if not args.gin_file or not args.model_dir:
        raise ValueError("launch needs --gin_file and --model_dir (a gs:// path every host can write)")
    acc = accelerator(args.accelerator)
    _, fsdp, model = acc.mesh
    if any(c in args.model_dir for c in "\"'\\$` "):
        raise ValueError(f"--model_dir must not contain quotes, spaces, '$' or backslashes: {args.model_dir!r}")
    # Double quotes escaped for the remote shell: gin gets a string literal, and the --command
    # argument holds no single quote (so it prints readably).
    bindings = [
        f'--gin.MODEL_DIR=\\"{args.model_dir}\\"',
        f"--gin.FSDP_PARALLELISM={fsdp}",
        f"--gin.MODEL_PARALLELISM={model}",
    ]
    train = " ".join(["musiclm", "train", *(shlex.quote(f) for f in _gin_flags(args)), *bindings])
    return [_ssh(args, f"nohup {train} > {LOG_FILE} 2>&1 &")]


def logs_commands(args) -> list[list[str]]:
    return [_ssh(args, f"tail -n 200 -F {LOG_FILE}", worker=str(args.worker))]


def stop_commands(args) -> list[list[str]]:
    # A relaunch resumes from the last checkpoint (CHECKPOINT_PERIOD): every host must stop, as a
    # save is collective across hosts, so no host tries a last save on its own.
    return [_ssh(args, 'pkill -f "musiclm train" || true')]


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
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("command", choices=list(COMMANDS))
    p.add_argument("--accelerator", default="v5e-16", help="slice: " + ", ".join(ACCELERATORS))
    p.add_argument("--name", help="TPU VM / queued resource name")
    p.add_argument("--zone", help="e.g. us-west4-a (where the accelerator is offered)")
    p.add_argument("--project", help="GCP project (default: gcloud's configured one)")
    p.add_argument("--queued", action="store_true", help="create/delete: a queued resource instead of a TPU VM")
    p.add_argument("--spot", action="store_true", help="create: spot capacity")
    p.add_argument("--package", help="setup: the musiclm-jax wheel to install on every worker")
    p.add_argument("--gin_file", action="append", default=[], help="preflight/launch: gin file (repeatable)")
    p.add_argument("--gin", action="append", default=[], help="preflight/launch: a binding KEY=VALUE (repeatable)")
    p.add_argument("--model_dir", help="launch: MODEL_DIR (gs://...)")
    p.add_argument("--worker", default="0", help="logs: which worker's log")
    p.add_argument("--dry_run", action="store_true", help="print the commands, run nothing")
    return p


def commands(argv: Sequence[str]) -> list[list[str]]:
    """The commands a command line would run (raises ValueError for bad arguments)."""
    args = parser().parse_args(argv)
    accelerator(args.accelerator)
    if args.command != "preflight":
        missing = [f"--{k}" for k in ("name", "zone") if not getattr(args, k)]
        if missing:
            raise ValueError(f"{args.command} needs {' and '.join(missing)}")
    return COMMANDS[args.command](args)


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        cmds = commands(argv)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    dry = "--dry_run" in argv
    for cmd in cmds:
        print(shlex.join(cmd), flush=True)
        if not dry:
            status = subprocess.call(cmd)
            if status != 0:
                return status
    return 0


if __name__ == "__main__":
    sys.exit(main())
