"""Shared bench helpers: the machine line every table starts with, median timing, markdown
tables, models from their gin files, and one trainer step timed with its MFU."""

import json
import logging
import os
import platform
import subprocess
import time
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

import gin


def machine() -> str:
    cpu = platform.processor() or "cpu"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores, jax {jax.__version__} on {jax.devices()[0].platform}"


def median_time(fn, warmup: int, runs: int) -> float:
    """Median wall time of `runs` calls of fn (results blocked on) after `warmup` calls."""
    for _ in range(warmup):
        jax.block_until_ready(fn())
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def table(rows: list[dict], cols: Optional[list[str]] = None) -> str:
    """A markdown table of `rows` (columns `cols`, default the first row's keys)."""
    cols = cols or list(rows[0])

    def fmt(v):
        if isinstance(v, float):
            return f"{v:,.3g}" if abs(v) < 100 else f"{v:,.0f}"
        return "-" if v is None else str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    return "\n".join(lines + ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in rows])


@gin.configurable
def _bench_spec(model=gin.REQUIRED, lengths=gin.REQUIRED, batch=gin.REQUIRED):
    return {"model": model, "lengths": lengths, "batch": batch}


def model_from_gin(name: str):
    """(model, feature lengths, batch per device) of gin/models/<name>.gin, e.g. 'mulan/paper'."""
    from musiclm_jax import gin_utils

    gin.clear_config()
    logging.disable(logging.ERROR)  # gin logs every search path that lacks the file
    try:
        gin_utils.parse(
            [f"models/{name}.gin"],
            [
                "_bench_spec.model = %MODEL",
                "_bench_spec.lengths = %TASK_FEATURE_LENGTHS",
                "_bench_spec.batch = %BATCH_SIZE_PER_DEVICE",
            ],
        )
        spec = _bench_spec()
    finally:
        logging.disable(logging.NOTSET)
        gin.clear_config()
    lengths = {
        k: tuple(int(n) for n in v) if isinstance(v, (tuple, list)) else int(v) for k, v in spec["lengths"].items()
    }
    return spec["model"], lengths, int(spec["batch"])


def random_batch(model, lengths: dict, batch: int) -> dict:
    """Random inputs: audio ~ 0.1 N(0, 1), token ids in [3, vocab) (1024 unless the model has a
    text vocabulary)."""
    rng = np.random.default_rng(0)
    out = {}
    for k, n in lengths.items():
        shape = (batch, *n) if isinstance(n, tuple) else (batch, n)
        if model.FEATURE_DTYPES.get(k, jnp.int32) == jnp.float32:
            out[k] = 0.1 * rng.standard_normal(shape).astype(np.float32)
        else:
            high = getattr(model.config, "vocab_size", 1024) if k == "text_tokens" else 1024
            out[k] = rng.integers(3, high, shape).astype(np.int32)
    return out


def time_train_step(model, data: dict, runs: int, warmup: int = 2) -> dict:
    """The trainer's compiled step on one device: step seconds, FLOPs per step (counted on the
    jaxpr), parameters. The state is donated and carried from call to call, as in training."""
    from musiclm_jax.training.optimizers import OptimizerConfig
    from musiclm_jax.training.partitioning import Partitioner
    from musiclm_jax.training.trainer import Trainer

    trainer = Trainer(
        model,
        Partitioner(devices=jax.devices()[:1]),
        OptimizerConfig(warmup_steps=0),
        total_steps=1000,
        input_shapes={k: v.shape for k, v in data.items()},
    )
    holder = {"state": trainer.init_state(trainer.rng(0))}
    gbatch, rng, step = trainer.partitioner.global_batch(data), trainer.rng(1), trainer.train_step

    def one():
        holder["state"], metrics = step(holder["state"], gbatch, rng)
        return metrics["loss"]

    t0 = time.perf_counter()
    jax.block_until_ready(one())
    first = time.perf_counter() - t0
    seconds = median_time(one, max(0, warmup - 1), runs)
    return {
        "params": trainer.param_count(),
        "step_s": seconds,
        "first_call_s": first,
        "flops": trainer.flops_per_step_per_device,
    }


class ReferenceWorker:
    """A PyTorch reference worker (bench/ref_*_worker.py, the serving side in ref_worker.py)
    running in the reference virtualenv; JSON lines over its stdin / stdout."""

    def __init__(self, worker: str, python: str, threads: int = 2):
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), worker)
        # Run from the bench folder: a stray package-less folder in the cwd can shadow imports.
        self.proc = subprocess.Popen(
            [python, path],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=os.path.dirname(path),
            stderr=subprocess.DEVNULL,
            env={**os.environ, "REF_THREADS": str(threads)},
        )

    def _ask(self, req: dict) -> dict:
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"reference worker exited (code {self.proc.poll()}) on {req}")
        return json.loads(line)

    def build(self, name: str, **request) -> dict:
        """Builds case `name` (fields as the worker expects) and returns its info."""
        return self._ask({"build": name, **request})

    def time(self, name: str) -> float:
        return self._ask({"time": name})["seconds"]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)
