"""Pictures for people who would rather look than read.

Log-mel spectrogram sheets, one row per clip: used by `musiclm inspect` (examples of a task)
and at eval (inputs over their reconstructions, as PNG files and TensorBoard images). A codec's
quality against its bitrate: written at each SoundStream eval.
"""

from __future__ import annotations

import textwrap
from typing import Mapping, Optional, Sequence

import numpy as np


def spectrogram_sheet(
    rows: Sequence[tuple[str, np.ndarray, int]],
    path: Optional[str] = None,
    width: float = 11.0,
    row_height: float = 2.3,
) -> np.ndarray:
    """Rows of (title, mono waveform, sample rate) -> RGB uint8 image [H, W, 3] of their log-mel
    spectrograms (librosa's mel filters, dB re full scale, same colour scale on every row);
    also saved as a PNG when `path` is given."""
    import librosa
    import librosa.display
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not rows:
        raise ValueError("spectrogram_sheet needs at least one row")
    fig, axes = plt.subplots(len(rows), 1, figsize=(width, row_height * len(rows)), squeeze=False)
    for ax, (title, audio, sr) in zip(axes[:, 0], rows):
        audio = np.asarray(audio, np.float32)
        mel = librosa.feature.melspectrogram(y=audio, sr=sr, n_fft=1024, hop_length=256, n_mels=80)
        img = librosa.display.specshow(
            librosa.power_to_db(mel, ref=1.0, top_db=80.0),
            sr=sr,
            hop_length=256,
            x_axis="time",
            y_axis="mel",
            ax=ax,
            cmap="magma",
            vmin=-80,
            vmax=0,
        )
        ax.set_title("\n".join(textwrap.wrap(title, 110)), fontsize=8, loc="left")
        ax.set_xlabel("")
        fig.colorbar(img, ax=ax, format="%+.0f dB", pad=0.01)
    fig.tight_layout()
    fig.set_dpi(80)
    fig.canvas.draw()
    image = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    if path:
        fig.savefig(path, dpi=80)
    plt.close(fig)
    return image


def quality_vs_bitrate(rows: Sequence[Mapping[str, float]], path: str, title: str = "codec") -> str:
    """Rows of {levels, bitrate_kbps, si_sdr, mel_distance} -> a PNG of two panels against kbps:
    SI-SDR (dB, higher is better) and mel distance (lower is better)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kbps = [r["bitrate_kbps"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    panels = (
        ("si_sdr", "SI-SDR (dB)", "SI-SDR (higher is better)", "C0"),
        ("mel_distance", "multi-scale mel distance", "mel distance (lower is better)", "C1"),
    )
    for ax, (key, ylabel, name, colour) in zip(axes, panels):
        values = [r[key] for r in rows]
        ax.plot(kbps, values, "o-", color=colour)
        ax.set(xlabel="bitrate (kbps)", ylabel=ylabel, title=name)
        ax.grid(alpha=0.3)
        for r, x, y in zip(rows, kbps, values):
            ax.annotate(f"{r['levels']}q", (x, y), fontsize=8, textcoords="offset points", xytext=(3, 3))
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def pitch_curves_over_spectrogram(
    audio: np.ndarray,
    sample_rate: int,
    curves: Sequence[tuple[str, np.ndarray, float]],
    path: str,
    title: str = "",
) -> str:
    """A log-frequency spectrogram of `audio` with pitch curves drawn over it: `curves` are
    (label, f0 in Hz per frame with NaN where unvoiced, frames per second). Melody conditioning's
    picture: the input tune's curve over the music made to follow it, beside that music's own."""
    import librosa
    import librosa.display
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    audio = np.asarray(audio, np.float32)
    fig, ax = plt.subplots(figsize=(11, 3.6))
    spec = np.abs(librosa.stft(audio, n_fft=2048, hop_length=256))
    librosa.display.specshow(
        librosa.amplitude_to_db(spec, ref=np.max, top_db=70.0),
        sr=sample_rate,
        hop_length=256,
        x_axis="time",
        y_axis="log",
        ax=ax,
        cmap="magma",
    )
    styles = [("white", "-", 2.5), ("cyan", "--", 1.5), ("lime", ":", 1.5)]
    for (label, f0, rate), (colour, line, width) in zip(curves, styles):
        f0 = np.asarray(f0, np.float64)
        ax.plot(np.arange(len(f0)) / rate, f0, color=colour, linestyle=line, linewidth=width, label=label)
    ax.set_ylim(50, min(4000, sample_rate / 2))
    ax.legend(loc="upper right", fontsize=8, framealpha=0.6)
    ax.set_title("\n".join(textwrap.wrap(title, 120)), fontsize=8, loc="left")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
