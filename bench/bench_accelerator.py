"""Paper-config training MFU and stage decode speed on whatever accelerator jax sees (GPU/TPU).

For each gin model file: one trainer step on random data at the config's batch (times
--batch_scale), the step's FLOPs from XLA's cost analysis, and MFU against both the chip's
published dense bf16 peak (--peak_tflops) and the bf16 matmul rate measured in this run. Then the
semantic stage's KV-cache decode (tokens/s) at the paper length. FLOPs are XLA's count of the
lowered step (the compiled count on GPU misses cuBLAS/cuDNN calls). Rows are also appended as JSON
lines to --out as they finish, so a run cut short keeps what it measured.

    python bench/bench_accelerator.py --peak_tflops 989 --out /tmp/acc.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from machine import machine, median_time, model_from_gin, random_batch, time_train_step  # noqa: E402

from musiclm_jax.training.mfu import measure_matmul_flops  # noqa: E402
from musiclm_jax.training.partitioning import unbox  # noqa: E402

MODELS = [
    "soundstream/paper",
    "mulan/paper",
    "w2v_bert/paper",
    "semantic_stage/paper",
    "coarse_stage/paper",
    "fine_stage/paper",
]


def bench_train(name: str, batch_scale: float, runs: int) -> dict:
    model, lengths, batch = model_from_gin(name)
    batch = max(1, int(batch * batch_scale))
    r = time_train_step(model, random_batch(model, lengths, batch), runs, warmup=1)
    flops = r["flops"]
    return dict(
        model=name,
        params=r["params"],
        batch=batch,
        lengths=",".join(f"{k}={v}" for k, v in lengths.items()),
        first_call_s=r["first_call_s"],
        step_s=r["step_s"],
        examples_per_s=batch / r["step_s"],
        tflops_per_s=flops / r["step_s"] / 1e12 if flops else None,
        flops=flops,
    )


def bench_decode(name: str, batch: int, tokens: int, runs: int) -> dict:
    model, lengths, _ = model_from_gin(name)
    target = model.config.target.feature
    shapes = {**{k: (batch, v) for k, v in lengths.items()}, target: (batch, tokens)}
    data = {k: jnp.asarray(v) for k, v in random_batch(model, lengths, batch).items() if k != target}
    params = jax.jit(lambda r: unbox(model.get_initial_variables(r, shapes))["params"])(jax.random.PRNGKey(0))
    fn = jax.jit(lambda p, b, r: model.predict_batch(p, b, r, num_target_tokens=tokens, temperature=1.0, top_k=50))
    t = median_time(lambda: fn(params, data, jax.random.PRNGKey(1)), 1, runs)
    return dict(
        model=name, batch=batch, tokens=tokens, seconds=t, tokens_per_s=batch * tokens / t, ms_per_step=t / tokens * 1e3
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--batch_scale", type=float, default=1.0)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--peak_tflops", type=float, default=None, help="the chip's dense bf16 peak (H100/H200 SXM: 989)")
    p.add_argument("--decode_batches", default="1,16")
    p.add_argument("--out", default=None)
    args = p.parse_args()

    def emit(row):
        print(json.dumps(row), flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps(row) + "\n")

    matmul = measure_matmul_flops(n=8192, dtype=jnp.bfloat16)
    emit({"machine": machine(), "device": str(jax.devices()[0].device_kind), "bf16_matmul_tflops": matmul / 1e12})
    rows = []
    for name in args.models.split(","):
        try:
            row = bench_train(name, args.batch_scale, args.runs)
        except Exception as e:  # one model failing (e.g. out of memory) must not lose the others
            row = dict(model=name, error=f"{type(e).__name__}: {str(e)[:300]}")
        if row.get("tflops_per_s"):
            row["mfu_vs_matmul"] = row["tflops_per_s"] * 1e12 / matmul
            if args.peak_tflops:
                row["mfu_vs_peak"] = row["tflops_per_s"] / args.peak_tflops
        rows.append(row)
        emit(row)
    for b in [int(x) for x in args.decode_batches.split(",") if x]:
        try:
            emit(bench_decode("semantic_stage/paper", b, 750, max(2, args.runs // 2)))
        except Exception as e:
            emit(dict(model="semantic_stage/paper decode", batch=b, error=f"{type(e).__name__}: {str(e)[:300]}"))


if __name__ == "__main__":
    main()
