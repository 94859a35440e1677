"""`musiclm inspect`: look at and listen to a task's examples instead of reading arrays.

Writes each example as a WAV, one PNG sheet of their log-mel spectrograms titled with the
captions, and `summary.json`; returns the summary (count, durations, sample rates).
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import textwrap
from typing import Optional

import numpy as np
import seqio
from tqdm import tqdm

from musiclm_jax.audio.io import write_wav
from musiclm_jax.data import audio_tasks, tasks


@dataclasses.dataclass
class InspectSummary:
    task: str
    split: str
    count: int
    durations_s: list
    sample_rates: list
    files: list

    def table(self) -> str:
        d = np.asarray(self.durations_s) if self.durations_s else np.zeros(1)
        rates = ", ".join(f"{r} Hz" for r in sorted(set(self.sample_rates)))
        return "\n".join([
            f"task {self.task} ({self.split}): {self.count} examples",
            f"  duration s: min {d.min():.2f}  median {np.median(d):.2f}  max {d.max():.2f}  total {d.sum():.1f}",
            f"  sample rates: {rates}",
        ])


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)[:60]


def _spectrogram_sheet(examples: list[dict], path: str) -> None:
    """One row per example: log-mel spectrogram (librosa's mel filters), caption as title."""
    import librosa
    import librosa.display
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(examples), 1, figsize=(11, 2.3 * len(examples)), squeeze=False)
    for ax, ex in zip(axes[:, 0], examples):
        sr = ex["sample_rate"]
        mel = librosa.feature.melspectrogram(y=ex["audio"], sr=sr, n_fft=1024, hop_length=256, n_mels=80)
        img = librosa.display.specshow(librosa.power_to_db(mel, ref=1.0, top_db=80.0), sr=sr, hop_length=256,
                                       x_axis="time", y_axis="mel", ax=ax, cmap="magma", vmin=-80, vmax=0)
        ax.set_title("\n".join(textwrap.wrap(f"{ex['id']}: {ex['caption']}", 110)), fontsize=8, loc="left")
        ax.set_xlabel("")
        fig.colorbar(img, ax=ax, format="%+.0f dB", pad=0.01)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def inspect_task(*, task: str, num_examples: int, output_dir: str, split: str = "train",
                 seed: Optional[int] = 0) -> InspectSummary:
    """Writes `num_examples` of `task` (in order, unshuffled) to `output_dir`."""
    if num_examples <= 0:
        raise ValueError(f"num_examples must be positive, got {num_examples}")
    tasks.validate_name(task)
    provider = seqio.get_mixture_or_task(task)
    if split not in provider.splits:
        raise ValueError(f"task {task!r} has no split {split!r}; it has {', '.join(provider.splits)}")
    ds = provider.get_dataset(None, split=split, shuffle=False, seed=seed)
    os.makedirs(output_dir, exist_ok=True)
    examples, files = [], []
    iterator = ds.take(num_examples).as_numpy_iterator()
    try:
        with audio_tasks.source_errors():
            for i, ex in enumerate(tqdm(iterator, total=num_examples, desc=f"inspect {task}", unit="ex")):
                _write_example(i, ex, task, output_dir, examples, files)
    finally:
        del iterator  # free the generator-backed iterator now, not in a late garbage collection
    if not examples:
        raise ValueError(f"task {task!r} split {split!r} yielded no examples")
    _spectrogram_sheet(examples, os.path.join(output_dir, "spectrograms.png"))
    summary = InspectSummary(task, split, len(examples), [f["duration_s"] for f in files],
                             [f["sample_rate"] for f in files], files)
    with open(os.path.join(output_dir, "summary.json"), "w") as f:
        json.dump(dataclasses.asdict(summary), f, indent=1)
    return summary


def _write_example(i: int, ex: dict, task: str, output_dir: str, examples: list, files: list) -> None:
    if "audio" not in ex:
        raise ValueError(f"task {task!r} has no 'audio' feature; inspect shows raw-audio tasks")
    audio = ex["audio"][: int(ex.get("audio_length", len(ex["audio"])))]
    rec = {"id": ex["id"].decode(), "caption": ex["caption"].decode(), "audio": audio,
           "sample_rate": int(ex["sample_rate"])}
    name = f"{i:03d}_{_safe_name(rec['id'])}.wav"
    write_wav(os.path.join(output_dir, name), audio, rec["sample_rate"])
    files.append({"wav": name, "id": rec["id"], "caption": rec["caption"],
                  "duration_s": len(audio) / rec["sample_rate"], "sample_rate": rec["sample_rate"]})
    examples.append(rec)

