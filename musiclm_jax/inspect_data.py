"""`musiclm inspect`: look at and listen to a task's examples instead of reading arrays.

Writes each example as a WAV, one PNG sheet of their log-mel spectrograms titled with the
captions, and `summary.json`; returns the summary (count, durations, sample rates). The output
directory may be a gs:// URL (musiclm_jax.fileio): every file appears whole, summary.json last.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Optional

import numpy as np
import seqio
from tqdm import tqdm

from musiclm_jax import fileio
from musiclm_jax.audio.io import write_wav
from musiclm_jax.audio.plots import spectrogram_sheet
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
        return "\n".join(
            [
                f"task {self.task} ({self.split}): {self.count} examples",
                f"  duration s: min {d.min():.2f}  median {np.median(d):.2f}  max {d.max():.2f}  total {d.sum():.1f}",
                f"  sample rates: {rates}",
            ]
        )


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)[:60]


def inspect_task(
    *, task: str, num_examples: int, output_dir: str, split: str = "train", seed: Optional[int] = 0
) -> InspectSummary:
    """Writes `num_examples` of `task` (in order, unshuffled) to `output_dir`.

    Args:
      task: a registered raw-audio seqio task or mixture.
      num_examples: how many examples, from the first (fewer when the split has fewer).
      output_dir: created if missing; gets NNN_<id>.wav per example, spectrograms.png (one sheet,
        each spectrogram titled 'id: caption') and summary.json.
      split: the split to read.
      seed: seeds the task's random preprocessing (e.g. a cropping task's crop); the order is fixed.
    Returns:
      The InspectSummary (also written as summary.json): task, split, count, durations_s,
      sample_rates and files (per example: wav, id, caption, duration_s, sample_rate).
    Raises:
      ValueError: `num_examples` <= 0, an unknown task, a split the task lacks, a task without an
        'audio' feature, or a split that yields no example.
    """
    if num_examples <= 0:
        raise ValueError(f"num_examples must be positive, got {num_examples}")
    tasks.validate_name(task)
    provider = seqio.get_mixture_or_task(task)
    if split not in provider.splits:
        raise ValueError(f"task {task!r} has no split {split!r}; it has {', '.join(provider.splits)}")
    ds = provider.get_dataset(None, split=split, shuffle=False, seed=seed)
    fileio.makedirs(output_dir)
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
    with fileio.local_output(fileio.join(output_dir, "spectrograms.png")) as png:
        spectrogram_sheet([(f"{ex['id']}: {ex['caption']}", ex["audio"], ex["sample_rate"]) for ex in examples], png)
    summary = InspectSummary(
        task, split, len(examples), [f["duration_s"] for f in files], [f["sample_rate"] for f in files], files
    )
    fileio.write_text(fileio.join(output_dir, "summary.json"), json.dumps(dataclasses.asdict(summary), indent=1))
    return summary


def _write_example(i: int, ex: dict, task: str, output_dir: str, examples: list, files: list) -> None:
    if "audio" not in ex:
        raise ValueError(f"task {task!r} has no 'audio' feature; inspect shows raw-audio tasks")
    audio = ex["audio"][: int(ex.get("audio_length", len(ex["audio"])))]
    rec = {
        "id": ex["id"].decode(),
        "caption": ex["caption"].decode(),
        "audio": audio,
        "sample_rate": int(ex["sample_rate"]),
    }
    name = f"{i:03d}_{_safe_name(rec['id'])}.wav"
    with fileio.local_output(fileio.join(output_dir, name)) as wav:
        write_wav(wav, audio, rec["sample_rate"])
    files.append(
        {
            "wav": name,
            "id": rec["id"],
            "caption": rec["caption"],
            "duration_s": len(audio) / rec["sample_rate"],
            "sample_rate": rec["sample_rate"],
        }
    )
    examples.append(rec)
