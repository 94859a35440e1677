"""The cost of two hosts on one machine: `musiclm train` as 2 processes x 4 simulated CPU devices
(jax.distributed, a localhost coordinator, CPU collectives over gloo) against 1 process x 8
devices, at the same global batch, interleaved (this machine drifts 15-30% within minutes).

    python bench/bench_multihost.py [--repeats 3] [--steps 40] [--batch_per_device 4]

Each run trains the tiny semantic stage (experiments/local_tiny.gin, no eval) and logs every 10
steps; the step time is the median over the logged windows after the first (which holds the
compilation). Prints one table: median ms/step of each layout and their ratio.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from emulators import free_port  # noqa: E402
from machine import machine  # noqa: E402

LOG_PERIOD = 10


def run(processes: int, steps: int, batch_per_device: int, work: str) -> float:
    """Median seconds per step of one training run laid out as `processes` x (8 / processes)."""
    model_dir = tempfile.mkdtemp(dir=work)
    args = [
        sys.executable,
        "-m",
        "musiclm_jax.main",
        "train",
        "--gin_file=experiments/local_tiny.gin",
        f"--gin.MODEL_DIR='{model_dir}'",
        f"--gin.TRAIN_STEPS={steps}",
        f"--gin.CHECKPOINT_PERIOD={steps}",
        "--gin.EVAL_PERIOD=0",
        f"--gin.BATCH_SIZE_PER_DEVICE={batch_per_device}",
        f"--gin.train.log_period={LOG_PERIOD}",
    ]
    port = free_port()
    procs = []
    for i in range(processes):
        env = {
            **os.environ,
            "JAX_PLATFORMS": "cpu",
            "TF_CPP_MIN_LOG_LEVEL": "3",
            "XLA_FLAGS": f"--xla_force_host_platform_device_count={8 // processes}",
        }
        if processes > 1:
            env.update(
                TPU_WORKER_HOSTNAMES=",".join(["localhost"] * processes),
                TPU_WORKER_ID=str(i),
                MUSICLM_COORDINATOR_PORT=str(port),
            )
        procs.append(subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate()[0] for p in procs]
    for p, out in zip(procs, outputs):
        if p.returncode:
            raise RuntimeError(f"training exited {p.returncode}:\n{out[-2000:]}")
    # "step 20/40 | loss ... | 1,234 tok/s | 56.7 ex/s | ..." from process 0.
    rates = [float(r.replace(",", "")) for r in re.findall(r"\| ([\d,.]+) ex/s", outputs[0])]
    global_batch = 8 * batch_per_device
    return float(np.median([global_batch / r for r in rates[1:]]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--batch_per_device", type=int, default=4)
    args = p.parse_args()
    times = {1: [], 2: []}
    with tempfile.TemporaryDirectory() as work:
        for _ in range(args.repeats):
            for processes in (1, 2):
                times[processes].append(run(processes, args.steps, args.batch_per_device, work))
                print(f"  {processes} process(es): {1000 * times[processes][-1]:.1f} ms/step", flush=True)
    one, two = (float(np.median(times[k])) for k in (1, 2))
    print(f"\nmachine: {machine()}")
    print(
        f"config: tiny semantic stage (experiments/local_tiny.gin), global batch {8 * args.batch_per_device}, "
        f"{args.steps} steps, median of {args.repeats} runs each (windows of {LOG_PERIOD} steps after the first)\n"
    )
    print("| layout | ms/step | vs 1 process |")
    print("|---|---|---|")
    print(f"| 1 process x 8 devices | {1000 * one:.1f} | 1.00x |")
    print(f"| 2 processes x 4 devices (jax.distributed, gloo) | {1000 * two:.1f} | {two / one:.2f}x |")


if __name__ == "__main__":
    main()
