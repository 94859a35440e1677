"""MuLan speed on this machine: training examples/s + MFU, and embedding throughput (clips/s).

Configs come from the model gin files (gin/models/mulan/{tiny,small,paper}.gin), with random
weights. Training is the trainer's own compiled step (one device). Embedding follows the paper:
each clip is cut into windows (window_seconds at hop_seconds), every window embedded, averaged;
clips/s counts 10 s clips. MFU = compiled step FLOPs / step time / this machine's float32
matmul rate measured in the same run. Medians of --runs timed calls after warm-up.

    python bench/bench_mulan.py                 # tiny + small
    python bench/bench_mulan.py --paper         # + the paper config (ResNet-50 + BERT-base; slow)
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import gin  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from machine import machine, median_time  # noqa: E402

from musiclm_jax import gin_utils  # noqa: E402
from musiclm_jax.models import gin_registry  # noqa: E402
from musiclm_jax.tokenizers.mulan import MuLanEmbedder  # noqa: E402
from musiclm_jax.training.mfu import measure_matmul_flops  # noqa: E402
from musiclm_jax.training.optimizers import OptimizerConfig  # noqa: E402
from musiclm_jax.training.partitioning import Partitioner, unbox  # noqa: E402
from musiclm_jax.training.trainer import Trainer  # noqa: E402


def from_gin(name: str):
    """(MuLan, feature lengths, batch) of gin/models/mulan/<name>.gin (crops = the embedding window)."""
    gin.clear_config()
    logging.disable(logging.ERROR)  # gin logs every search path that lacks the file
    gin_utils.parse([f"models/mulan/{name}.gin"], [])
    logging.disable(logging.NOTSET)
    model = gin_registry.MuLan()
    lengths = {"audio": model.config.window_samples, "text_tokens": model.config.max_text_length}
    batch = gin.query_parameter("%BATCH_SIZE_PER_DEVICE")
    gin.clear_config()
    return model, lengths, batch


def random_batch(model, lengths: dict, batch: int) -> dict:
    rng = np.random.default_rng(0)
    return {"audio": 0.1 * rng.standard_normal((batch, lengths["audio"])).astype(np.float32),
            "text_tokens": rng.integers(3, model.config.vocab_size, (batch, lengths["text_tokens"])).astype(np.int32)}


def bench_train(name: str, runs: int, matmul: float, batch: int | None) -> dict:
    model, lengths, default_batch = from_gin(name)
    batch = batch or default_batch
    data = random_batch(model, lengths, batch)
    trainer = Trainer(model, Partitioner(devices=jax.devices()[:1]), OptimizerConfig(warmup_steps=0),
                      total_steps=1000, input_shapes={k: v.shape for k, v in data.items()})
    holder = {"state": trainer.init_state(trainer.rng(0))}
    gbatch, rng, step = trainer.partitioner.global_batch(data), trainer.rng(1), trainer.train_step

    def one():
        holder["state"], metrics = step(holder["state"], gbatch, rng)
        return metrics["loss"]

    t = median_time(one, 2, runs)
    flops = trainer.flops_per_step_per_device
    return dict(config=name, encoder=model.config.audio_encoder, params=trainer.param_count(), batch=batch,
                crop_s=lengths["audio"] / model.config.sample_rate, step_s=t, examples_per_s=batch / t,
                mfu=flops / t / matmul if flops else None)


def bench_embed(name: str, runs: int, clip_seconds: float = 10.0, num_clips: int = 8) -> dict:
    model, lengths, _ = from_gin(name)
    params = jax.jit(lambda r: unbox(model.get_initial_variables(
        r, {"audio": (1, lengths["audio"]), "text_tokens": (1, lengths["text_tokens"])}))["params"])(
        jax.random.PRNGKey(0))
    embedder = MuLanEmbedder(model, params, window_batch=16)
    rng = np.random.default_rng(1)
    clips = [0.1 * rng.standard_normal(int(clip_seconds * model.config.sample_rate)).astype(np.float32)
             for _ in range(num_clips)]
    t = median_time(lambda: embedder.embed_audio(clips), 1, runs)
    windows = len(range(0, max(1, int(clip_seconds - model.config.window_seconds) + 1)))
    return dict(config=name, clip_s=clip_seconds, clips=num_clips, windows_per_clip=windows, seconds=t,
                clips_per_s=num_clips / t, x_real_time=num_clips * clip_seconds / t)


def table(rows: list[dict]) -> str:
    cols = list(rows[0])

    def fmt(v):
        if isinstance(v, float):
            return f"{v:,.3g}" if abs(v) < 100 else f"{v:,.0f}"
        return "-" if v is None else str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    return "\n".join(lines + ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in rows])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--paper", action="store_true", help="also the paper config (batch --paper_batch)")
    p.add_argument("--paper_batch", type=int, default=2)
    args = p.parse_args()
    matmul = measure_matmul_flops()
    names = ["tiny", "small"] + (["paper"] if args.paper else [])
    train = [bench_train(n, args.runs, matmul, args.paper_batch if n == "paper" else None) for n in names]
    embed = [bench_embed(n, args.runs) for n in names]
    print(f"machine: {machine()}; float32 matmul {matmul / 1e9:.0f} GFLOP/s; median of {args.runs}")
    print("\nTraining (trainer step, 1 device, random data)\n" + table(train))
    print("\nAudio embedding of 10 s clips (windows averaged)\n" + table(embed))


if __name__ == "__main__":
    main()
