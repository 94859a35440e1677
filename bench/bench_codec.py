"""SoundStream speed: train step time and encode + decode real-time factor on this machine,
side by side with the PyTorch references in the same run.

    python bench/bench_codec.py [--repeats 5] [--ref_python /tmp/venv-ref291/bin/python] [--no_paper_train]

Cases (batch 4 x 1 s at 24 kHz for training; 10 s, batch 1 for inference):
  - train step (generator + discriminator update) at the small config and at the paper config,
    against lucidrains' audiolm-pytorch SoundStream built at the same SEANet channels, strides,
    latent dim and RVQ (its local-attention layers off, as SoundStream has none);
  - encode + decode of 10 s at the paper config (6 kbps), against audiolm-pytorch at the same
    config and the `encodec` package's 24 kHz EncodecModel at 6 kbps (random init).

The references run in a separate virtualenv (../shared/bench-ref/setup_venvs.sh) through
bench/ref_codec_worker.py; each repeat times ours once and the reference once, interleaved,
because this machine drifts 15-30% within minutes. Medians and ratios are printed as a table.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from machine import ReferenceWorker, machine  # noqa: E402

from musiclm_jax.models.soundstream import SoundStream, SoundStreamConfig  # noqa: E402
from musiclm_jax.nn.discriminators import DiscriminatorConfig  # noqa: E402
from musiclm_jax.nn.seanet import SEANetConfig  # noqa: E402
from musiclm_jax.training.optimizers import OptimizerConfig  # noqa: E402
from musiclm_jax.training.partitioning import Partitioner, unbox  # noqa: E402
from musiclm_jax.training.trainer import Trainer  # noqa: E402

SMALL = SoundStreamConfig(
    sample_rate=24000,
    num_levels=8,
    codebook_size=256,
    seanet=SEANetConfig(channels=16, dim=64, strides=(2, 4, 5, 6), channel_multipliers=(2, 4, 8, 16)),
    discriminators=DiscriminatorConfig(
        stft_channels=16, wave_channels=8, wave_max_channels=256, wave_downsample=(4, 4, 4)
    ),
)
PAPER = SoundStreamConfig(
    sample_rate=24000,
    num_levels=12,
    codebook_size=1024,
    seanet=SEANetConfig(channels=32, dim=128, strides=(3, 4, 5, 8)),
)
DEFAULT_REF_PYTHON = "/tmp/venv-ref291/bin/python"


def audiolm_config(cfg: SoundStreamConfig, **extra) -> dict:
    """audiolm-pytorch SoundStream arguments equal to our config."""
    return {
        "channels": cfg.seanet.channels,
        "strides": list(cfg.seanet.strides),
        "channel_mults": list(cfg.seanet.channel_multipliers),
        "codebook_dim": cfg.seanet.dim,
        "codebook_size": cfg.codebook_size,
        "num_levels": cfg.num_levels,
        "sample_rate": cfg.sample_rate,
        "use_local_attn": False,
        **extra,
    }


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def our_train_step(cfg: SoundStreamConfig, batch: int, seconds: float):
    """Returns (one full GAN step as a callable, {generator, discriminators} parameter counts)."""
    model = SoundStream(cfg)
    samples = int(seconds * cfg.sample_rate)
    trainer = Trainer(
        model,
        Partitioner(devices=jax.devices()[:1]),
        OptimizerConfig(),
        total_steps=100,
        input_shapes={"audio": (batch, samples)},
    )
    state = trainer.init_state(trainer.rng(0))
    x = trainer.partitioner.global_batch(
        {"audio": np.random.default_rng(0).uniform(-0.3, 0.3, (batch, samples)).astype(np.float32)}
    )
    holder = [state]

    def step():
        holder[0], m = trainer.train_step(holder[0], x, trainer.rng(1))
        jax.block_until_ready(m["loss"])

    step()  # compile + warm-up
    count = lambda tree: sum(int(np.prod(a.shape)) for a in jax.tree.leaves(tree))  # noqa: E731
    return step, {"generator": count(state.params["generator"]), "discriminators": count(state.params["discriminator"])}


def our_roundtrip(cfg: SoundStreamConfig, seconds: float):
    model = SoundStream(cfg)
    samples = int(seconds * cfg.sample_rate)
    params = unbox(model.get_initial_variables(jax.random.PRNGKey(0), {"audio": (1, samples)})["params"])
    x = np.random.default_rng(0).uniform(-0.3, 0.3, (1, samples)).astype(np.float32)
    encode, decode = jax.jit(model.encode), jax.jit(model.decode)

    def roundtrip():
        jax.block_until_ready(decode(params, encode(params, x)))

    roundtrip()
    gen = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(params["generator"]))
    return roundtrip, {"generator": gen}


def interleave(ours, refs: dict, repeats: int) -> dict:
    """Median seconds of ours and of each reference, one call each per repeat."""
    times = {"ours": [], **{k: [] for k in refs}}
    for _ in range(repeats):
        times["ours"].append(timed(ours))
        for name, ref_time in refs.items():
            times[name].append(ref_time())
    return {k: float(np.median(v)) for k, v in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument(
        "--ref_python",
        default=os.environ.get("MUSICLM_REF_PYTHON", DEFAULT_REF_PYTHON),
        help="python of the reference virtualenv; '' to time ours only",
    )
    p.add_argument("--no_paper_train", action="store_true", help="skip the (slow) paper-config train step")
    args = p.parse_args()
    ref = (
        ReferenceWorker("ref_codec_worker.py", args.ref_python)
        if args.ref_python and os.path.exists(args.ref_python)
        else None
    )
    if ref is None:
        print(f"(no reference venv at {args.ref_python!r}: timing ours only)")
    rows = []

    train_cases = [("small", SMALL)] + ([] if args.no_paper_train else [("paper", PAPER)])
    for label, cfg in train_cases:
        step, ours_params = our_train_step(cfg, batch=4, seconds=1.0)
        refs = {}
        if ref:
            info = ref.build(f"train_{label}", kind="audiolm_train", config=audiolm_config(cfg, batch=4, seconds=1.0))
            refs["audiolm-pytorch"] = lambda n=f"train_{label}": ref.time(n)
        med = interleave(step, refs, args.repeats)
        rows.append((f"train step, {label} config, batch 4 x 1 s (G + D)", "ours", med["ours"], ours_params, None, 4.0))
        if ref:
            rows.append(
                (
                    "",
                    "audiolm-pytorch",
                    med["audiolm-pytorch"],
                    info["params"],
                    med["audiolm-pytorch"] / med["ours"],
                    4.0,
                )
            )

    roundtrip, ours_params = our_roundtrip(PAPER, 10.0)
    refs = {}
    if ref:
        a = ref.build("infer_audiolm", kind="audiolm_infer", config=audiolm_config(PAPER, seconds=10.0))
        e = ref.build("infer_encodec", kind="encodec_infer", config={"bandwidth_kbps": 6.0, "seconds": 10.0})
        refs = {"audiolm-pytorch": lambda: ref.time("infer_audiolm"), "encodec": lambda: ref.time("infer_encodec")}
    med = interleave(roundtrip, refs, args.repeats)
    rows.append(("encode + decode 10 s, paper config (6 kbps), batch 1", "ours", med["ours"], ours_params, None, 10.0))
    if ref:
        rows.append(
            (
                "",
                "audiolm-pytorch (same config)",
                med["audiolm-pytorch"],
                a["params"],
                med["audiolm-pytorch"] / med["ours"],
                10.0,
            )
        )
        rows.append(("", "EnCodec 24 kHz, 6 kbps", med["encodec"], e["params"], med["encodec"] / med["ours"], 10.0))
        ref.close()

    print(
        f"\nmachine: {machine()}; float32; median of {args.repeats} interleaved repeats"
        + (f"; references: torch {info['torch']} (2 threads)" if ref else "")
    )
    print("| case | implementation | median s | x real time | generator / discriminator params | ours faster by |")
    print("|---|---|---|---|---|---|")
    for case, impl, sec, params, ratio, audio_s in rows:
        counts = f"{params['generator'] / 1e6:.1f}M" + (
            f" / {params['discriminators'] / 1e6:.1f}M" if "discriminators" in params else ""
        )
        shown = "" if ratio is None else f"{ratio:.2f}x"
        print(f"| {case} | {impl} | {sec:.3f} | {audio_s / sec:.1f}x | {counts} | {shown} |")


if __name__ == "__main__":
    main()
