"""Waveform I/O: decode a (cropped) clip to float32 mono at a target rate, and write WAVs.

Decoding uses `soundfile` (libsndfile): wav, flac, ogg/vorbis, and mp3 where libsndfile is
>= 1.1 built with mpg123/lame (the pinned soundfile wheels are). With an older libsndfile,
mp3 falls back to `librosa.load`, i.e. audioread, which needs ffmpeg or GStreamer on the
machine. Only the requested [start_s, end_s] frames are decoded (seek + read), so cropping
a 10 s MusicCaps clip out of a long track does not decode the track.

Every failure is an `AudioDecodeError` whose `category` is one of the decode-failure
categories below (which `musiclm_jax.data.bad_input` counts), so sources can count it without
parsing messages.
"""

from __future__ import annotations

import dataclasses
import os
import struct

import numpy as np
import soundfile as sf

from musiclm_jax import fileio

# Why a file cannot become a clip (the bad-input categories of decoding; data.bad_input counts them).
CORRUPT = "corrupt"
TRUNCATED = "truncated"
EMPTY_FILE = "empty_file"
SILENT = "silent"
NON_FINITE = "non_finite"
UNKNOWN_EXTENSION = "unknown_extension"
MISSING_FILE = "missing_file"
SILENT_PEAK = 1e-4  # a clip whose peak is below this is silent

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")
_RESAMPLE_TYPE = "soxr_hq"
_PEAK_CEILING = 1.0


class AudioDecodeError(Exception):
    """A file that cannot become a usable clip; `category` is one of the categories above."""

    def __init__(self, category: str, path: str | os.PathLike, detail: str):
        self.category = category
        self.path = str(path)
        self.detail = detail
        super().__init__(f"{category}: {self.path}: {detail}")


@dataclasses.dataclass(frozen=True)
class AudioInfo:
    """What the file was and what `load_audio` did to it (callers count the repairs)."""

    path: str
    orig_sample_rate: int
    orig_channels: int
    sample_rate: int
    num_samples: int
    file_duration_s: float
    resampled: bool
    downmixed: bool
    gain_db: float = 0.0
    peak_limited: bool = False


def load_audio(
    path: str | os.PathLike,
    *,
    sample_rate: int,
    start_s: float | None = None,
    end_s: float | None = None,
    normalize_db: float | None = None,
) -> tuple[np.ndarray, AudioInfo]:
    """Decodes [start_s, end_s] of `path` to float32 mono at `sample_rate`.

    Multichannel audio is averaged to mono; another file rate is resampled with soxr_hq.
    `normalize_db` scales the clip to that RMS level in dBFS (RMS, not LUFS: no K-weighting
    or gating), then scales it down if needed so the peak stays within [-1, 1] (so a very
    peaky clip can end below the target; `info.peak_limited` says so).

    `path` may be an object-store URL (gs://...): the object is downloaded whole to a temporary
    file to be decoded (libsndfile reads local files); errors and `info.path` name the URL.

    Raises AudioDecodeError: missing_file, empty_file, unknown_extension, corrupt,
    truncated (file shorter than its header or than `end_s`), non_finite, silent.
    """
    path = os.fspath(path)
    if fileio.is_url(path):
        if not fileio.isfile(path):
            raise AudioDecodeError(MISSING_FILE, path, "no such file")
        with fileio.local_copy(path) as local:
            try:
                audio, info = load_audio(
                    local, sample_rate=sample_rate, start_s=start_s, end_s=end_s, normalize_db=normalize_db
                )
            except AudioDecodeError as e:
                raise AudioDecodeError(e.category, path, e.detail.replace(local, path)) from e
        return audio, dataclasses.replace(info, path=path)
    _check_file(path)
    frames, file_sr, file_frames = _read_frames(path, start_s, end_s)
    channels = frames.shape[1]
    if not np.all(np.isfinite(frames)):
        bad = int(np.size(frames) - np.count_nonzero(np.isfinite(frames)))
        raise AudioDecodeError(NON_FINITE, path, f"{bad} NaN/Inf samples")
    mono = frames.mean(axis=1, dtype=np.float32) if channels > 1 else frames[:, 0]
    peak = float(np.max(np.abs(mono))) if mono.size else 0.0
    if peak < SILENT_PEAK:
        raise AudioDecodeError(SILENT, path, f"peak {peak:.2e} < {SILENT_PEAK:g}")
    resampled = file_sr != sample_rate
    if resampled:
        mono = resample(mono, file_sr, sample_rate)
    gain_db, limited = 0.0, False
    if normalize_db is not None:
        mono, gain_db, limited = normalize_rms(mono, normalize_db)
    mono = np.clip(mono, -1.0, 1.0).astype(np.float32, copy=False)
    info = AudioInfo(
        path=path,
        orig_sample_rate=file_sr,
        orig_channels=channels,
        sample_rate=sample_rate,
        num_samples=int(mono.shape[0]),
        file_duration_s=file_frames / file_sr,
        resampled=resampled,
        downmixed=channels > 1,
        gain_db=gain_db,
        peak_limited=limited,
    )
    return mono, info


def _check_file(path: str) -> None:
    """The cheap checks that need no decoder: exists, non-empty, known extension."""
    if not os.path.isfile(path):
        raise AudioDecodeError(MISSING_FILE, path, "no such file")
    if os.path.getsize(path) == 0:
        raise AudioDecodeError(EMPTY_FILE, path, "zero-length file")
    ext = os.path.splitext(path)[1].lower()
    if ext not in AUDIO_EXTENSIONS:
        raise AudioDecodeError(UNKNOWN_EXTENSION, path, f"extension {ext!r} not in {AUDIO_EXTENSIONS}")
    if ext == ".wav":
        _check_riff_size(path)


def _check_riff_size(path: str) -> None:
    """libsndfile quietly reads a cut WAV up to where it ends; the RIFF size field tells."""
    with open(path, "rb") as f:
        head = f.read(12)
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return  # not RIFF/WAVE (e.g. RF64): leave it to the decoder
    declared = struct.unpack("<I", head[4:8])[0] + 8
    actual = os.path.getsize(path)
    # Streaming writers leave 0 or 0xFFFFFFFF when they never patch the header.
    if declared not in (8, 0xFFFFFFFF + 8) and actual < declared:
        raise AudioDecodeError(TRUNCATED, path, f"RIFF header declares {declared} bytes, file has {actual}")


def _read_frames(path: str, start_s: float | None, end_s: float | None) -> tuple[np.ndarray, int, int]:
    """Returns ([n, channels] float32, file rate, file frames), reading only the crop."""
    if path.lower().endswith(".mp3") and "MP3" not in sf.available_formats():
        return _read_with_audioread(path, start_s, end_s)
    try:
        f = sf.SoundFile(path)
    except (sf.LibsndfileError, RuntimeError) as e:
        raise AudioDecodeError(CORRUPT, path, f"cannot open: {e}") from e
    with f:
        sr, total = f.samplerate, f.frames
        start, stop = _crop_frames(path, sr, total, start_s, end_s)
        try:
            if start:
                f.seek(start)
            frames = f.read(stop - start, dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError) as e:
            # libsndfile cannot tell a cut FLAC/OGG stream from a damaged one.
            raise AudioDecodeError(CORRUPT, path, f"decode failed (damaged or truncated stream): {e}") from e
    if frames.shape[0] < stop - start:
        raise AudioDecodeError(
            TRUNCATED, path, f"decoded {frames.shape[0]} of the {stop - start} frames the header promises"
        )
    return frames, sr, total


def _crop_frames(path: str, sr: int, total: int, start_s: float | None, end_s: float | None) -> tuple[int, int]:
    start = 0 if start_s is None else int(round(start_s * sr))
    stop = total if end_s is None else int(round(end_s * sr))
    if start < 0 or stop <= start:
        raise ValueError(f"{path}: bad crop [{start_s}, {end_s}] s")
    if stop > total:
        hint = " (already-cropped files need already_cropped=True)" if start >= total else ""
        raise AudioDecodeError(
            TRUNCATED, path, f"clip needs up to {stop / sr:.2f} s, file has {total / sr:.2f} s{hint}"
        )
    return start, stop


def _read_with_audioread(path: str, start_s: float | None, end_s: float | None) -> tuple[np.ndarray, int, int]:
    """mp3 without libsndfile mp3 support: librosa/audioread (needs ffmpeg or GStreamer)."""
    import librosa  # slow import; only on this path

    offset = start_s or 0.0
    duration = None if end_s is None else end_s - offset
    try:
        y, sr = librosa.load(path, sr=None, mono=False, offset=offset, duration=duration, dtype=np.float32)
        total = int(round(librosa.get_duration(path=path) * sr))
    except Exception as e:  # audioread raises backend-specific errors
        raise AudioDecodeError(CORRUPT, path, f"audioread could not decode: {e}") from e
    frames = np.atleast_2d(y).T
    if end_s is not None and frames.shape[0] < int(round(duration * sr)):
        raise AudioDecodeError(TRUNCATED, path, f"clip needs up to {end_s:.2f} s, file has {total / sr:.2f} s")
    return np.ascontiguousarray(frames), int(sr), total


def resample(waveform: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Band-limited resampling (soxr_hq); output length is ceil(n * target / orig)."""
    if orig_sr == target_sr:
        return waveform
    import librosa

    return librosa.resample(waveform, orig_sr=orig_sr, target_sr=target_sr, res_type=_RESAMPLE_TYPE).astype(np.float32)


def rms_db(waveform: np.ndarray) -> float:
    """RMS level in dBFS (a full-scale square wave is 0 dB, a full-scale sine -3 dB)."""
    rms = float(np.sqrt(np.mean(np.square(waveform, dtype=np.float64))))
    return 20.0 * np.log10(max(rms, 1e-12))


def normalize_rms(waveform: np.ndarray, target_db: float) -> tuple[np.ndarray, float, bool]:
    """Scales to `target_db` RMS dBFS, then down so |peak| <= 1. Returns (audio, gain_db, limited)."""
    gain_db = target_db - rms_db(waveform)
    out = waveform * np.float32(10.0 ** (gain_db / 20.0))
    peak = float(np.max(np.abs(out))) if out.size else 0.0
    limited = peak > _PEAK_CEILING
    if limited:
        out = out * np.float32(_PEAK_CEILING / peak)
        gain_db += 20.0 * np.log10(_PEAK_CEILING / peak)
    return out.astype(np.float32, copy=False), float(gain_db), limited


def write_wav(path: str | os.PathLike, waveform: np.ndarray, sample_rate: int, *, subtype: str = "PCM_16") -> None:
    """Writes mono [n] or [n, channels] audio clipped to [-1, 1]; subtype PCM_16 or FLOAT."""
    if subtype not in ("PCM_16", "PCM_24", "FLOAT"):
        raise ValueError(f"write_wav: subtype {subtype!r} must be PCM_16, PCM_24 or FLOAT")
    data = np.asarray(waveform, dtype=np.float32)
    if data.ndim not in (1, 2):
        raise ValueError(f"write_wav {path}: waveform must be [n] or [n, channels], got {data.shape}")
    if not np.all(np.isfinite(data)):
        raise ValueError(f"write_wav {path}: waveform has NaN/Inf samples")
    sf.write(os.fspath(path), np.clip(data, -1.0, 1.0), int(sample_rate), subtype=subtype, format="WAV")
