"""FolderSource decode + resample throughput on this machine.

Writes N 10 s 44.1 kHz stereo files (half wav, half flac) of tones + noise to a temp dir,
then times a full pass of `FolderSource.examples("train")` at each target rate (decode,
downmix, soxr_hq resample). Reports the median of --runs passes after one warm-up pass
(which also warms the page cache, so this is decode cost, not disk).

    python bench/bench_sources.py                 # 20 files, 24 kHz and 16 kHz
    python bench/bench_sources.py --files 40 --runs 7 --rates 24000 16000 44100
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import tempfile
import time

import numpy as np
import soundfile as sf

from musiclm_jax.data.sources import FolderSource

FILE_SR = 44100
FILE_SECONDS = 10.0


def make_files(folder: str, n: int) -> float:
    """Writes the corpus; returns its total duration in seconds."""
    rng = np.random.default_rng(0)
    t = np.arange(int(FILE_SR * FILE_SECONDS)) / FILE_SR
    for i in range(n):
        left = 0.3 * np.sin(2 * np.pi * (220 + 20 * i) * t) + 0.05 * rng.standard_normal(t.size)
        right = 0.3 * np.sin(2 * np.pi * (330 + 20 * i) * t) + 0.05 * rng.standard_normal(t.size)
        stereo = np.stack([left, right], axis=1).astype(np.float32)
        ext = "wav" if i % 2 == 0 else "flac"
        sf.write(os.path.join(folder, f"clip{i:03d}.{ext}"), stereo, FILE_SR, subtype="PCM_16")
        with open(os.path.join(folder, f"clip{i:03d}.txt"), "w") as f:
            f.write(f"two tones, clip {i}")
    return n * FILE_SECONDS


def time_pass(folder: str, sample_rate: int) -> tuple[float, int]:
    source = FolderSource(folder, sample_rate=sample_rate, validation_fraction=0.0)
    start = time.perf_counter()
    n = sum(1 for _ in source.examples("train"))
    return time.perf_counter() - start, n


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("--files", type=int, default=20)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--rates", type=int, nargs="+", default=[24000, 16000])
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)  # the per-file "resampled"/"downmixed" repairs are expected here

    print(
        f"machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
        f"os.cpu_count()={os.cpu_count()}, python {platform.python_version()}, "
        f"soundfile {sf.__version__} (libsndfile {sf.__libsndfile_version__})"
    )
    with tempfile.TemporaryDirectory() as folder:
        audio_seconds = make_files(folder, args.files)
        print(
            f"corpus: {args.files} x {FILE_SECONDS:g} s {FILE_SR} Hz stereo PCM_16 (wav/flac alternating), "
            f"median of {args.runs} passes after 1 warm-up\n"
        )
        print(f"{'target rate':>11} | {'pass s':>7} | {'files/s':>8} | {'x real time':>11}")
        print("-" * 47)
        for rate in args.rates:
            time_pass(folder, rate)
            times = []
            for _ in range(args.runs):
                seconds, n = time_pass(folder, rate)
                assert n == args.files, f"expected {args.files} examples, got {n}"
                times.append(seconds)
            med = statistics.median(times)
            print(f"{rate:>8} Hz | {med:7.3f} | {args.files / med:8.1f} | {audio_seconds / med:10.0f}x")


if __name__ == "__main__":
    main()
