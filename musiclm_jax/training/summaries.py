"""TensorBoard summaries (clu metric writers) and the console progress line."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from typing import Mapping, Optional

import jax
import numpy as np
from clu import metric_writers

from musiclm_jax import fileio


def create_writer(logdir: str):
    """A TensorBoard writer for `logdir` (a local path or a URL). Only process 0 writes event
    files; the others log. For a URL the events are written to a local folder and copied to
    `logdir` at every flush: TensorFlow's own GCS client (which tf.summary would use) cannot be
    pointed at a test server, and one path layer (fileio) serves every store."""
    just_logging = jax.process_index() > 0
    if just_logging or not fileio.is_url(logdir):
        return metric_writers.create_default_writer(logdir, just_logging=just_logging, asynchronous=True)
    return MirroredWriter(logdir)


class MirroredWriter:
    """A clu writer on a local folder whose event files are copied to a URL (whole files) at each
    flush and at most UPLOAD_EVERY_S after a write, so TensorBoard on the bucket follows a
    running job."""

    UPLOAD_EVERY_S = 60.0

    def __init__(self, url: str):
        self.url = url
        self._local = tempfile.mkdtemp(prefix="musiclm-events-")
        self._writer = metric_writers.create_default_writer(self._local, asynchronous=True)
        self._uploaded = time.monotonic()

    def __getattr__(self, name):  # write_scalars, write_images, write_audios, ...
        attr = getattr(self._writer, name)
        if not name.startswith("write_"):
            return attr

        def write(*args, **kwargs):
            attr(*args, **kwargs)
            if time.monotonic() - self._uploaded > self.UPLOAD_EVERY_S:
                self.flush()

        return write

    def flush(self) -> None:
        self._writer.flush()
        for name in os.listdir(self._local):
            fileio.copy(os.path.join(self._local, name), fileio.join(self.url, name))
        self._uploaded = time.monotonic()

    def close(self) -> None:
        self.flush()
        self._writer.close()
        shutil.rmtree(self._local, ignore_errors=True)


def write_eval_media(
    writer: metric_writers.MetricWriter,
    step: int,
    media: Mapping[str, np.ndarray],
    sample_rate: int,
    out_dir: Optional[str] = None,
) -> None:
    """Eval waveforms {name: [examples, samples]} as TensorBoard audio, plus one spectrogram sheet
    per example (every name stacked, e.g. input over reconstruction) as a TensorBoard image;
    with `out_dir`, also as WAV and PNG files there (process 0)."""
    if not media:
        return
    from musiclm_jax.audio.io import write_wav
    from musiclm_jax.audio.plots import spectrogram_sheet

    media = {k: np.clip(np.asarray(v, np.float32), -1.0, 1.0) for k, v in media.items()}
    writer.write_audios(step, {f"audio/{k}": v[..., None] for k, v in media.items()}, sample_rate=sample_rate)
    if jax.process_index() != 0:
        return
    images = {}
    for i in range(min(len(v) for v in media.values())):
        rows = [(f"example {i}: {name} (step {step})", v[i], sample_rate) for name, v in media.items()]
        if not out_dir:
            images[f"spectrogram/example_{i}"] = spectrogram_sheet(rows, None)
            continue
        with fileio.local_output(fileio.join(out_dir, f"example_{i}.png")) as png:
            images[f"spectrogram/example_{i}"] = spectrogram_sheet(rows, png)
        for name, v in media.items():
            with fileio.local_output(fileio.join(out_dir, f"example_{i}_{name}.wav")) as wav:
                write_wav(wav, v[i], sample_rate)
    writer.write_images(step, images)


def format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class ProgressLine:
    """One line per logging period: step, loss, throughput, MFU, ETA."""

    def __init__(self, total_steps: int, start_step: int):
        self.total_steps = total_steps
        self.start_step = start_step
        self.t0 = time.perf_counter()

    def line(self, step: int, scalars: Mapping[str, float]) -> str:
        done = step - self.start_step
        elapsed = time.perf_counter() - self.t0
        eta = elapsed / done * (self.total_steps - step) if done > 0 else float("nan")
        parts = [f"step {step}/{self.total_steps}", f"loss {scalars.get('loss', float('nan')):.4f}"]
        if "accuracy" in scalars:
            parts.append(f"acc {scalars['accuracy']:.3f}")
        if "tokens_per_sec" in scalars:
            parts.append(f"{scalars['tokens_per_sec']:,.0f} tok/s")
        if "examples_per_sec" in scalars:
            parts.append(f"{scalars['examples_per_sec']:,.1f} ex/s")
        if scalars.get("mfu") is not None:
            parts.append(f"MFU {100 * scalars['mfu']:.1f}%")
        parts.append(f"ETA {format_duration(eta) if done > 0 else '?'}")
        return " | ".join(parts)


def log(msg: str, *args) -> None:
    if jax.process_index() == 0:
        logging.info(msg, *args)
        print(msg % args if args else msg, flush=True)


def warn_loudly(msg: str) -> None:
    """A warning nobody scrolls past: framed on stdout and in the log (process 0)."""
    if jax.process_index() == 0:
        logging.warning(msg)
        bar = "!" * 78
        print(f"{bar}\n!! WARNING: {msg}\n{bar}", flush=True)


def flatten_scalars(metrics: Mapping[str, object], prefix: Optional[str] = None) -> dict[str, float]:
    out = {}
    for k, v in metrics.items():
        out[f"{prefix}/{k}" if prefix else k] = float(v)
    return out
