"""Attribute detector and classifier accuracy against the synthetic source's labels.

Each classic detector (musiclm_jax/evaluation/attributes.py) runs on --num held-out
(validation-seed) clips; the attribute classifier is trained on --train training-split clips
and scored on the same held-out clips. Prints one table plus the machine and timings.

    python bench/bench_attributes.py                        # 200 x 10 s clips, 16 kHz
    python bench/bench_attributes.py --num 60 --duration 6  # quicker
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # noqa: E402
from machine import machine  # noqa: E402  (bench/machine.py)
from tqdm import tqdm  # noqa: E402

from musiclm_jax.data import synthetic  # noqa: E402
from musiclm_jax.evaluation import attributes  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("--num", type=int, default=200, help="held-out clips")
    parser.add_argument("--duration", type=float, default=10.0, help="clip length, seconds")
    parser.add_argument("--sample-rate", type=int, default=16000)
    parser.add_argument("--train", type=int, default=512, help="classifier training clips")
    parser.add_argument("--train-duration", type=float, default=4.0)
    parser.add_argument("--steps", type=int, default=600, help="classifier training steps")
    args = parser.parse_args()
    print(f"machine: {machine()}")

    seed = synthetic.SPLIT_SEEDS["validation"]
    clips = [
        synthetic.render(seed, i, sample_rate=args.sample_rate, duration_s=args.duration)
        for i in tqdm(range(args.num), desc="render held-out")
    ]
    hits = {a: [] for a in attributes.DETECTORS}
    seconds = {a: 0.0 for a in attributes.DETECTORS}
    for ex in tqdm(clips, desc="detectors"):
        for attr, detect in attributes.DETECTORS.items():
            t = time.perf_counter()
            hits[attr].append(detect(ex.audio, ex.sample_rate) == ex.labels[attr])
            seconds[attr] += time.perf_counter() - t

    t = time.perf_counter()
    params, config = attributes.train_attribute_classifier(
        num_examples=args.train,
        seed=0,
        sample_rate=args.sample_rate,
        duration_s=args.train_duration,
        steps=args.steps,
        progress=True,
    )
    train_s = time.perf_counter() - t
    # The classifier sees train-length crops of the held-out clips, the length it was trained on.
    crop = int(args.train_duration * args.sample_rate)
    probs = attributes.predict_label_distributions(
        params, config, np.stack([c.audio[:crop] for c in clips]), args.sample_rate
    )

    print(
        f"\n{args.num} held-out clips x {args.duration:g} s at {args.sample_rate} Hz "
        f"(classifier: {args.train} train clips x {args.train_duration:g} s, {args.steps} steps, "
        f"{train_s:.0f} s to train)"
    )
    print(f"{'attribute':<12} {'chance':>7} {'detector':>9} {'s/clip':>7} {'classifier':>11}")
    for attr in ("instrument", "tempo_class", "key", "mode", "register", "drums", "loudness", "texture"):
        chance = 1 / len(synthetic.LABEL_VALUES[attr])
        det = f"{np.mean(hits[attr]):9.3f}" if attr in hits else f"{'-':>9}"
        per_clip = f"{seconds[attr] / args.num:7.2f}" if attr in seconds else f"{'-':>7}"
        if attr in config.attributes:
            classes = config.classes[config.attributes.index(attr)]
            truth = np.array([classes.index(str(c.labels[attr])) for c in clips])
            clf = f"{(probs[attr].argmax(-1) == truth).mean():11.3f}"
        else:
            clf = f"{'-':>11}"
        print(f"{attr:<12} {chance:7.3f} {det} {per_clip} {clf}")


if __name__ == "__main__":
    main()
