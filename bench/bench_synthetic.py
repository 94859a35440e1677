"""Synthetic music rendering speed, in x real time on one core, per timbre and sample rate.

    python bench/bench_synthetic.py [--examples 20] [--duration_s 10] [--repeats 5]

Pins the process to one CPU (the issue's yardstick: >= 50x real time on one core) and
prints the median of `repeats` passes over the same `examples` pieces.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np

from musiclm_jax.data import synthetic


def _time_pass(scores, sample_rate: int) -> float:
    start = time.perf_counter()
    for i, score in enumerate(scores):
        synthetic.render_score(score, sample_rate, seed=i)
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("--examples", type=int, default=14)
    p.add_argument("--duration_s", type=float, default=10.0)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    print(
        f"machine: {platform.machine()} {platform.processor() or ''} | pinned to 1 core of {os.cpu_count()} | "
        f"numpy {np.__version__} | {args.examples} pieces x {args.duration_s:g} s, median of {args.repeats}"
    )
    rows = []
    for instrument in synthetic.INSTRUMENTS + ("(all, as sampled)",):
        scores = []
        for i in range(args.examples):
            s = synthetic.sample_score(0, i, args.duration_s)
            if not instrument.startswith("("):
                labels = dict(
                    s.labels, instrument=instrument, register="low" if instrument == "bass" else s.labels["register"]
                )
                s = synthetic.Score(labels, s.duration_s, s.notes, s.hits)
            scores.append(s)
        row = [instrument]
        for sr in (16000, 24000):
            _time_pass(scores[:2], sr)  # warm-up
            seconds = float(np.median([_time_pass(scores, sr) for _ in range(args.repeats)]))
            row.append(args.examples * args.duration_s / seconds)
        rows.append(row)
    print("\n| timbre | x real time @16 kHz | x real time @24 kHz |\n|---|---|---|")
    for name, a, b in rows:
        print(f"| {name} | {a:.0f} | {b:.0f} |")


if __name__ == "__main__":
    main()
