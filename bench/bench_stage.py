"""Stage transformer speed on this machine: train tokens/s + MFU, decode tokens/s per length,
and (with --ref) the audiolm-pytorch SemanticTransformer at an equal config, interleaved.

MFU = the train step's FLOPs (XLA cost analysis of the compiled step) / step time / this
machine's float32 matmul rate, measured in the same run (a CPU has no published peak).
Every number is the median of --runs timed calls after warm-up. The machine's speed drifts
15-30% within minutes: compare ratios taken in one run, not raw numbers across runs.

    python bench/bench_stage.py                      # tiny + small, train and decode
    python bench/bench_stage.py --ref --rounds 3     # + equal-config comparison with PyTorch
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from machine import machine, median_time, table  # noqa: E402  (bench/machine.py)

from musiclm_jax.models.stages import StageConfig, StageModel  # noqa: E402
from musiclm_jax.models.token_layout import TokenLayout  # noqa: E402
from musiclm_jax.nn.compiler import compiler_options  # noqa: E402
from musiclm_jax.training.mfu import measure_matmul_flops  # noqa: E402
from musiclm_jax.training.optimizers import OptimizerConfig  # noqa: E402
from musiclm_jax.training.partitioning import Partitioner  # noqa: E402
from musiclm_jax.training.trainer import Trainer  # noqa: E402

REF_DIR = "/work/shared/bench-ref"
REF_PYTHON = "/tmp/venv-ref291/bin/python"

CONFIGS = {
    # name: (StageConfig overrides, batch, target tokens)
    "tiny": (dict(num_layers=2, num_heads=4, head_dim=16, d_model=64, d_ff=256), 8, 24),
    "small": (dict(num_layers=8, num_heads=8, head_dim=64, d_model=512, d_ff=2048), 8, 250),
    # audiolm-pytorch SemanticTransformer(dim=256, depth=4, heads=4, dim_head=64): one key/value
    # head shared by the 4 query heads (its to_kv), GEGLU ff mult 4 (inner width
    # int(256 * 2 * 4 / 3) = 682), 1024 semantic ids, unconditional, 256 tokens; ours has one
    # condition token. Layers unrolled (scan_unroll), as on CPU they should be.
    "ref-equal": (
        dict(
            num_layers=4,
            num_heads=4,
            head_dim=64,
            d_model=256,
            d_ff=682,
            num_kv_heads=1,
            scan_unroll=4,
            layout=TokenLayout(streams=(("mulan", 1, 1024), ("semantic", 1, 1024))),
            conditions=(("mulan_tokens", "mulan", 0, 1),),
        ),
        8,
        256,
    ),
}


def make_model(name: str) -> tuple[StageModel, int, int]:
    overrides, batch, targets = CONFIGS[name]
    cfg = StageConfig(**{"dropout_rate": 0.0, "cond_dropout_rate": 0.0, **overrides})
    return StageModel(cfg), batch, targets


def batch_for(model: StageModel, batch: int, targets: int) -> dict:
    rng = np.random.default_rng(0)
    out = {}
    for spec in model.config.conditions:
        out[spec.feature] = rng.integers(0, 1024, (batch, spec.num_levels), dtype=np.int32)
    out[model.config.target.feature] = rng.integers(0, 1024, (batch, targets), dtype=np.int32)
    return out


def bench_train(name: str, runs: int, matmul: float) -> dict:
    model, batch, targets = make_model(name)
    data = batch_for(model, batch, targets)
    shapes = {k: v.shape for k, v in data.items()}
    opt = OptimizerConfig(learning_rate=3e-4, warmup_steps=0, weight_decay=0.01, clip_grad_norm=0.5)
    trainer = Trainer(model, Partitioner(devices=jax.devices()[:1]), opt, total_steps=1000, input_shapes=shapes)
    state = trainer.init_state(trainer.rng(0))
    gbatch = trainer.partitioner.global_batch(data)
    rng = trainer.rng(1)
    step = trainer.train_step
    holder = {"state": state}

    def one():
        holder["state"], metrics = step(holder["state"], gbatch, rng)
        return metrics["loss"]

    t = median_time(one, 2, runs)
    flops = trainer.flops_per_step_per_device
    tokens = sum(int(np.prod(v.shape)) for v in data.values())
    return dict(
        config=name,
        params=trainer.param_count(),
        batch=batch,
        seq=tokens // batch,
        step_s=t,
        tokens_per_s=tokens / t,
        flops=flops,
        mfu=flops / t / matmul if flops else None,
    )


def bench_decode(name: str, lengths: list[int], batch: int, runs: int) -> list[dict]:
    model, _, _ = make_model(name)
    data = {k: jnp.asarray(v) for k, v in batch_for(model, batch, 1).items() if k != model.config.target.feature}
    shapes = {**{k: v.shape for k, v in data.items()}, model.config.target.feature: (batch, max(lengths))}
    params = jax.jit(
        lambda r: jax.tree.map(
            lambda x: x.value if hasattr(x, "value") else x,
            model.get_initial_variables(r, shapes)["params"],
            is_leaf=lambda x: hasattr(x, "value"),
        )
    )(jax.random.PRNGKey(0))
    rows = []
    for n in lengths:
        fn = jax.jit(
            lambda p, b, r, n=n: model.predict_batch(p, b, r, num_target_tokens=n, temperature=1.0, top_k=50),
            compiler_options=compiler_options(),  # as the library compiles its samplers
        )
        t = median_time(lambda: fn(params, data, jax.random.PRNGKey(1)), 1, runs)
        rows.append(
            dict(config=name, batch=batch, tokens=n, seconds=t, ms_per_token=t / n * 1e3, tokens_per_s=batch * n / t)
        )
    return rows


def run_reference(runs: int) -> dict | None:
    if not os.path.exists(REF_PYTHON):
        return None
    with tempfile.TemporaryDirectory() as out:
        env = {**os.environ, "BENCH_RESULTS_DIR": out}
        r = subprocess.run(
            [REF_PYTHON, "bench_semantic.py", "--mode", "all", "--runs", str(runs)],
            cwd=REF_DIR,
            env=env,
            capture_output=True,
            text=True,
        )
        if r.returncode:
            print("reference failed:", r.stderr[-2000:], file=sys.stderr)
            return None
        with open(os.path.join(out, "semantic_all.json")) as f:
            return json.load(f)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    p.add_argument("--configs", default="tiny,small")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--decode-lengths", default="256,512,1024,2048")
    p.add_argument("--decode-batch", type=int, default=1)
    p.add_argument("--ref", action="store_true", help="also time audiolm-pytorch at the equal config, interleaved")
    p.add_argument("--rounds", type=int, default=2, help="with --ref: interleaved rounds (ours, theirs)")
    args = p.parse_args()

    print(f"machine: {machine()}")
    matmul = measure_matmul_flops()
    print(f"float32 matmul 2048^3: {matmul / 1e9:,.0f} GFLOP/s (median of 7)\n")

    configs = args.configs.split(",")
    lengths = [int(x) for x in args.decode_lengths.split(",")]
    train_rows = [bench_train(c, args.runs, matmul) for c in configs]
    for r in train_rows:
        r["mfu_%"] = 100 * r["mfu"] if r["mfu"] else None
        r["GFLOP/step"] = r["flops"] / 1e9 if r["flops"] else None
    print("## Train step (AdamW, clip, one device)\n")
    print(table(train_rows, ["config", "params", "batch", "seq", "step_s", "tokens_per_s", "GFLOP/step", "mfu_%"]))
    decode_rows = [row for c in configs for row in bench_decode(c, lengths, args.decode_batch, max(args.runs // 2, 2))]
    print(f"\n## Decode (KV cache, one compiled loop, batch {args.decode_batch}, top-k 50)\n")
    print(table(decode_rows, ["config", "batch", "tokens", "seconds", "ms_per_token", "tokens_per_s"]))
    for c in configs:
        per = [r["ms_per_token"] for r in decode_rows if r["config"] == c]
        print(f"{c}: ms/token at {lengths[-1]} vs {lengths[0]}: {per[-1] / per[0]:.2f}x")

    if args.ref:
        ours, theirs = [], []
        for i in range(args.rounds):
            m = measure_matmul_flops()
            ours.append(
                dict(
                    train=bench_train("ref-equal", args.runs, m),
                    gen1=bench_decode("ref-equal", [256], 1, args.runs)[0],
                    gen8=bench_decode("ref-equal", [256], 8, args.runs)[0],
                )
            )
            ref = run_reference(args.runs)
            if ref is None:
                print("reference venv not available (see ../shared/bench-ref/setup_venvs.sh); skipped")
                break
            theirs.append(ref["results"])
        if theirs:
            rows = []
            for key, o_key in (("train", "train"), ("generate_b1_kvcache", "gen1"), ("generate_b8_kvcache", "gen8")):
                o = float(np.median([r[o_key]["tokens_per_s"] for r in ours]))
                t = float(np.median([r[key]["tokens_per_s"] for r in theirs]))
                rows.append(dict(case=key, ours_tokens_per_s=o, ref_tokens_per_s=t, ratio=o / t))
            print(f"\n## Equal config vs audiolm-pytorch SemanticTransformer ({len(theirs)} interleaved rounds)\n")
            print(table(rows, ["case", "ours_tokens_per_s", "ref_tokens_per_s", "ratio"]))


if __name__ == "__main__":
    main()
