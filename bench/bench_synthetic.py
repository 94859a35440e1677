"""Synthetic music: rendering speed (x real time on one core), additive vs sampled timbres,
and how well the attribute detectors read the labels in each.

    python bench/bench_synthetic.py [--examples 14] [--duration_s 4] [--repeats 5]
                                    [--per_instrument] [--detectors 60]

Speed: pins the process to one CPU (the issue's yardstick: >= 50x real time on one core) and
renders the same `examples` scores (seed 0) with each timbre source, median of `repeats`
passes after a warm-up pass (the SoundFont's parse and per-rate resampling are cached per
process; their one-off cost is printed apart). --per_instrument adds one row per instrument.

--detectors N: the same N held-out-split scores rendered with both sources at 16 and 24 kHz,
and the share of clips whose register, drums and tempo class the detectors
(evaluation/attributes.py) read right.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # bench/machine.py names the jax platform

import numpy as np  # noqa: E402
from machine import machine  # noqa: E402  (bench/machine.py)

from musiclm_jax.data import soundfont, synthetic  # noqa: E402

RATES = (16000, 24000)


def _with(score: synthetic.Score, **labels) -> synthetic.Score:
    return synthetic.Score(dict(score.labels, **labels), score.duration_s, score.notes, score.hits)


def _time_pass(scores, sample_rate: int) -> float:
    start = time.perf_counter()
    for i, score in enumerate(scores):
        synthetic.render_score(score, sample_rate, seed=i)
    return time.perf_counter() - start


def _speed_rows(args) -> list[list]:
    base = [synthetic.sample_score(0, i, args.duration_s) for i in range(args.examples)]
    groups = [("all, as drawn", None)]
    if args.per_instrument:
        groups += [(inst, inst) for inst in synthetic.INSTRUMENTS]
    rows = []
    for source in synthetic.TIMBRE_SOURCES:
        for name, instrument in groups:
            scores = []
            for s in base:
                if instrument is not None:  # every note by this instrument, no accompaniment
                    notes = tuple(dataclasses.replace(n, instrument=instrument) for n in s.notes)
                    reg = "low" if instrument == "bass" else s.labels["register"]
                    s = synthetic.Score(
                        dict(s.labels, instrument=instrument, accompaniment=None, register=reg),
                        s.duration_s,
                        notes,
                        s.hits,
                    )
                scores.append(_with(s, timbre_source=source))
            row = [source, name]
            for sr in RATES:
                _time_pass(scores, sr)  # warm-up (fills the sample caches)
                seconds = float(np.median([_time_pass(scores, sr) for _ in range(args.repeats)]))
                row.append(args.examples * args.duration_s / seconds)
            rows.append(row)
    return rows


def _detector_rows(n: int, duration_s: float) -> list[list]:
    from musiclm_jax.evaluation import attributes

    rows = []
    seed = synthetic.SPLIT_SEEDS["validation"]
    scores = [synthetic.sample_score(seed, i, duration_s) for i in range(n)]
    for sr in RATES:
        for source in synthetic.TIMBRE_SOURCES:
            hits = {"register": 0, "drums": 0, "tempo_class": 0}
            for i, score in enumerate(scores):
                x = synthetic.render_score(_with(score, timbre_source=source), sr, seed=i)
                hits["register"] += attributes.detect_register(x, sr)[0] == score.labels["register"]
                hits["drums"] += attributes.detect_drums(x, sr)[0] == score.labels["drums"]
                hits["tempo_class"] += attributes.detect_tempo(x, sr)[0] == score.labels["tempo_class"]
            rows.append([sr, source] + [hits[k] / n for k in ("register", "drums", "tempo_class")])
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("--examples", type=int, default=14)
    p.add_argument("--duration_s", type=float, default=4.0)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--per_instrument", action="store_true")
    p.add_argument("--detectors", type=int, default=0, help="clips per source and rate for the detector table")
    args = p.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    print(f"machine: {machine()} | pinned to 1 core | numpy {np.__version__}")
    print(
        f"config: {args.examples} scores (seed 0) x {args.duration_s:g} s, median of {args.repeats} passes, "
        f"font {soundfont.FONT_FILE} from the installed {soundfont.FONT_PACKAGE}"
    )
    start = time.perf_counter()
    soundfont.load_font()
    print(f"one-off: SoundFont parse {time.perf_counter() - start:.2f} s (once per process)")

    rows = _speed_rows(args)
    print("\n| timbre source | pieces | x real time @16 kHz | x real time @24 kHz |\n|---|---|---|---|")
    for source, name, a, b in rows:
        print(f"| {source} | {name} | {a:.0f} | {b:.0f} |")

    if args.detectors:
        print(
            f"\nDetector accuracy: the same {args.detectors} held-out scores x {args.duration_s:g} s in both sources"
            "\n\n| rate | timbre source | register | drums | tempo class |\n|---|---|---|---|---|"
        )
        for sr, source, reg, drums, tempo in _detector_rows(args.detectors, args.duration_s):
            print(f"| {sr // 1000} kHz | {source} | {reg:.2f} | {drums:.2f} | {tempo:.2f} |")


if __name__ == "__main__":
    main()
