"""SoundStream speed: train step time (small config) and encode + decode real-time factor
(paper config) on this machine; optionally side by side with the PyTorch references.

    python bench/bench_codec.py [--repeats 5]

Prints a table with the median of `repeats` timed calls after warm-up. The reference
implementations (audiolm-pytorch SoundStream, encodec's EncodecModel) live in a separate
virtualenv built by ../shared/bench-ref; run their scripts at the configs printed here and
interleave with this one (this machine drifts 15-30% within minutes).
"""
from __future__ import annotations

import argparse
import os
import platform
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402

from musiclm_jax.models.soundstream import SoundStream, SoundStreamConfig  # noqa: E402
from musiclm_jax.nn.discriminators import DiscriminatorConfig  # noqa: E402
from musiclm_jax.nn.seanet import SEANetConfig  # noqa: E402
from musiclm_jax.training.optimizers import OptimizerConfig  # noqa: E402
from musiclm_jax.training.partitioning import Partitioner  # noqa: E402
from musiclm_jax.training.trainer import Trainer  # noqa: E402

SMALL = SoundStreamConfig(
    sample_rate=24000, num_levels=8, codebook_size=256,
    seanet=SEANetConfig(channels=16, dim=64, strides=(2, 4, 5, 6), channel_multipliers=(2, 4, 8, 16)),
    discriminators=DiscriminatorConfig(stft_channels=16, wave_channels=8, wave_max_channels=256,
                                       wave_downsample=(4, 4, 4)))
PAPER = SoundStreamConfig(sample_rate=24000, num_levels=12, codebook_size=1024,
                          seanet=SEANetConfig(channels=32, dim=128, strides=(3, 4, 5, 8)))


def _median_time(fn, repeats: int) -> float:
    fn()  # warm-up / compile
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def bench_train(cfg: SoundStreamConfig, batch: int, seconds: float, repeats: int) -> float:
    model = SoundStream(cfg)
    samples = int(seconds * cfg.sample_rate)
    trainer = Trainer(model, Partitioner(devices=jax.devices()[:1]), OptimizerConfig(), total_steps=100,
                      input_shapes={"audio": (batch, samples)})
    state = trainer.init_state(trainer.rng(0))
    x = trainer.partitioner.global_batch({"audio": np.random.default_rng(0).uniform(-0.3, 0.3, (batch, samples))
                                          .astype(np.float32)})
    holder = [state]

    def step():
        holder[0], m = trainer.train_step(holder[0], x, trainer.rng(1))
        jax.block_until_ready(m["loss"])

    return _median_time(step, repeats)


def bench_codec(cfg: SoundStreamConfig, seconds: float, repeats: int) -> tuple[float, float]:
    model = SoundStream(cfg)
    from musiclm_jax.training.partitioning import unbox

    samples = int(seconds * cfg.sample_rate)
    params = unbox(model.get_initial_variables(jax.random.PRNGKey(0), {"audio": (1, samples)})["params"])
    x = np.random.default_rng(0).uniform(-0.3, 0.3, (1, samples)).astype(np.float32)
    encode = jax.jit(model.encode)
    decode = jax.jit(model.decode)
    codes = encode(params, x)
    t_enc = _median_time(lambda: jax.block_until_ready(encode(params, x)), repeats)
    t_dec = _median_time(lambda: jax.block_until_ready(decode(params, codes)), repeats)
    return t_enc, t_dec


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    print(f"machine: {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} cores, "
          f"jax {jax.__version__} on {jax.devices()[0].platform}, float32")
    step = bench_train(SMALL, batch=4, seconds=1.0, repeats=args.repeats)
    print(f"\n| train step, small config (batch 4 x 1 s at 24 kHz, G + D update) | {step:.3f} s |")
    enc, dec = bench_codec(PAPER, seconds=10.0, repeats=args.repeats)
    print(f"| paper codec, 10 s at 24 kHz: encode | {enc:.3f} s = {10 / enc:.1f}x real time |")
    print(f"| paper codec, 10 s at 24 kHz: decode | {dec:.3f} s = {10 / dec:.1f}x real time |")
    print(f"| paper codec: encode + decode real-time factor | {(enc + dec) / 10:.3f} |")


if __name__ == "__main__":
    main()
