"""Codec evaluation output: quality against bitrate, from the per-level eval metrics.

`SoundStream.eval_fn` reports `mel_distance_q{n}`, `si_sdr_q{n}` and `bitrate_kbps_q{n}` for
n = 1, 2, 4, ..., all levels; this turns them into a table and a PNG plot.
"""
from __future__ import annotations

import re
from typing import Mapping


def quality_by_levels(metrics: Mapping[str, float]) -> list[dict]:
    """[{levels, bitrate_kbps, si_sdr, mel_distance}] sorted by levels."""
    levels = sorted({int(m.group(1)) for k in metrics for m in [re.fullmatch(r"si_sdr_q(\d+)", k)] if m})
    return [{"levels": n, "bitrate_kbps": float(metrics[f"bitrate_kbps_q{n}"]), "si_sdr": float(metrics[f"si_sdr_q{n}"]),
             "mel_distance": float(metrics[f"mel_distance_q{n}"])} for n in levels]


def plot_quality_vs_bitrate(metrics: Mapping[str, float], path: str, title: str = "codec") -> str:
    """Two panels: SI-SDR (dB, higher is better) and mel distance (lower is better) against kbps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = quality_by_levels(metrics)
    if not rows:
        raise ValueError("no per-level codec metrics (si_sdr_q<n>) to plot")
    kbps = [r["bitrate_kbps"] for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    a.plot(kbps, [r["si_sdr"] for r in rows], "o-")
    a.set(xlabel="bitrate (kbps)", ylabel="SI-SDR (dB)", title="SI-SDR (higher is better)")
    b.plot(kbps, [r["mel_distance"] for r in rows], "o-", color="C1")
    b.set(xlabel="bitrate (kbps)", ylabel="multi-scale mel distance", title="mel distance (lower is better)")
    for ax in (a, b):
        ax.grid(alpha=0.3)
        for r, x in zip(rows, kbps):
            ax.annotate(f"{r['levels']}q", (x, ax.lines[0].get_ydata()[rows.index(r)]), fontsize=8,
                        textcoords="offset points", xytext=(3, 3))
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
