"""Does a reconstruction keep the pitch? f0 of an original and its copy, tracked by librosa's pyin.

    agreement = pitch_agreement(original, reconstruction, sample_rate)
    agreement.fraction   # of the original's voiced frames where the copy's f0 is within 50 cents

A frame counts as agreeing only when pyin finds the copy voiced there too and its f0 lies within
`tolerance_cents` of the original's; an octave error counts as a miss. The tracker is not ours
(librosa's pyin), so a codec cannot pass by learning the metric's quirks.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

FMIN_HZ, FMAX_HZ = 55.0, 1760.0  # A1..A6: the synthetic registers' melodies with room to spare
TOLERANCE_CENTS = 50.0


@dataclasses.dataclass(frozen=True)
class PitchAgreement:
    agreeing: int  # voiced frames of the original where the copy is within tolerance
    voiced: int  # voiced frames of the original
    copy_voiced: int  # of those, frames where pyin found the copy voiced at all

    @property
    def fraction(self) -> float:
        return self.agreeing / self.voiced if self.voiced else float("nan")

    def __add__(self, other: "PitchAgreement") -> "PitchAgreement":
        return PitchAgreement(
            self.agreeing + other.agreeing, self.voiced + other.voiced, self.copy_voiced + other.copy_voiced
        )


def track_f0(waveform: np.ndarray, sample_rate: int, frame_length: int = 2048) -> np.ndarray:
    """f0 in Hz per frame (hop frame_length / 4), NaN where pyin finds no voiced pitch."""
    import librosa

    x = np.asarray(waveform, np.float32).reshape(-1)
    f0, voiced, _ = librosa.pyin(
        x, fmin=FMIN_HZ, fmax=FMAX_HZ, sr=sample_rate, frame_length=frame_length, hop_length=frame_length // 4
    )
    return np.where(voiced, f0, np.nan)


def pitch_agreement(
    original: np.ndarray, copy: np.ndarray, sample_rate: int, tolerance_cents: float = TOLERANCE_CENTS
) -> PitchAgreement:
    """Frame-level f0 agreement of `copy` with `original` (same length and rate)."""
    if np.shape(original) != np.shape(copy):
        raise ValueError(f"original {np.shape(original)} and copy {np.shape(copy)} differ in shape")
    a, b = track_f0(original, sample_rate), track_f0(copy, sample_rate)
    voiced = ~np.isnan(a)
    both = voiced & ~np.isnan(b)
    cents = np.abs(1200.0 * np.log2(b[both] / a[both]))
    return PitchAgreement(int(np.sum(cents <= tolerance_cents)), int(voiced.sum()), int(both.sum()))


def total_agreement(originals: Sequence[np.ndarray], copies: Sequence[np.ndarray], sample_rate: int) -> PitchAgreement:
    """Pooled over clips (voiced frames of all originals together)."""
    if len(originals) != len(copies):
        raise ValueError(f"{len(originals)} originals but {len(copies)} copies")
    total = PitchAgreement(0, 0, 0)
    for a, b in zip(originals, copies):
        total = total + pitch_agreement(a, b, sample_rate)
    return total


# ---- melody adherence: does generated music follow a given tune? ---------------------------------

CHROMA_HOP = 512


def chroma_frames(waveform: np.ndarray, sample_rate: int) -> np.ndarray:
    """librosa's STFT chroma [frames, 12], each frame scaled to unit length (silent frames zero)."""
    import librosa

    chroma = librosa.feature.chroma_stft(
        y=np.asarray(waveform, np.float32).reshape(-1), sr=sample_rate, n_fft=4096, hop_length=CHROMA_HOP, norm=None
    ).T
    norms = np.linalg.norm(chroma, axis=1, keepdims=True)
    return np.where(norms > 1e-8, chroma / np.maximum(norms, 1e-8), 0.0)


def melody_adherence(tune: np.ndarray, generated: np.ndarray, sample_rate: int) -> dict[str, float]:
    """How closely `generated` follows `tune` (same rate; compared over the shorter length):

    chroma_cosine          MusicGen's melody measure: the mean over the tune's voiced frames (pyin)
                           of the cosine between the generated chroma and the one-hot pitch class
                           the tune sounds there
    pitch_class_agreement  of the tune's voiced frames, the share where pyin finds the generated
                           music voiced at the same pitch class (within 50 cents, any octave)
    voiced_frames          how many frames those are (0: the tune had no tracked pitch: NaN scores)

    The trackers are librosa's (pyin, chroma), not ours."""
    n = min(len(tune), len(generated))
    tune, generated = np.asarray(tune[:n], np.float32), np.asarray(generated[:n], np.float32)
    f0_tune, f0_gen = track_f0(tune, sample_rate, 4 * CHROMA_HOP), track_f0(generated, sample_rate, 4 * CHROMA_HOP)
    chroma = chroma_frames(generated, sample_rate)
    frames = min(len(f0_tune), len(chroma))
    f0_tune, f0_gen, chroma = f0_tune[:frames], f0_gen[:frames], chroma[:frames]
    voiced = ~np.isnan(f0_tune)
    if not voiced.any():
        return {"chroma_cosine": float("nan"), "pitch_class_agreement": float("nan"), "voiced_frames": 0}
    midi_tune = 69.0 + 12.0 * np.log2(f0_tune[voiced] / 440.0)
    classes = np.round(midi_tune).astype(int) % 12
    cosine = float(np.mean(chroma[voiced][np.arange(len(classes)), classes]))
    midi_gen = 69.0 + 12.0 * np.log2(f0_gen[voiced] / 440.0)  # NaN where unvoiced: never agrees
    distance = np.abs((midi_gen - midi_tune + 6.0) % 12.0 - 6.0)  # semitones, octaves ignored
    agree = float(np.mean(np.nan_to_num(distance, nan=12.0) <= TOLERANCE_CENTS / 100.0))
    return {"chroma_cosine": cosine, "pitch_class_agreement": agree, "voiced_frames": int(voiced.sum())}
