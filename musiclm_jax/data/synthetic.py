"""The embedded synthetic music source: procedurally rendered, captioned, labelled music.

Deterministic by (seed, index) at any sample rate and duration. A piece is sampled as a
*score* (key, mode, tempo, chord progression, a melody built from repeated motifs, drum
pattern) and then rendered with one of seven timbres plus an optional drum kit. Each
example carries the labels it was made from, so text adherence is measurable:

  instrument  piano | organ | plucked | square_lead | strings | bell | bass
  tempo_class slow (60-76 BPM) | medium (92-112) | fast (132-160), with `bpm`
  key, mode   tonic pitch class name, major | minor
  register    low | mid | high (where the melody sits; bass is always low)
  drums       True | False (kick, snare, hi-hat)
  loudness    soft | medium | loud (target RMS -26 / -18 / -12 dBFS)
  texture     melody | melody_chords | arpeggio

Pure numpy (Karplus-Strong computed a period at a time), so it renders far faster than
real time on one core; see bench/bench_synthetic.py.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Iterator, Optional, Sequence

import numpy as np
from scipy.ndimage import maximum_filter1d, uniform_filter1d

from musiclm_jax.data.bad_input import BadInputReport
from musiclm_jax.data.captions import caption_for
from musiclm_jax.data.sources import Example

INSTRUMENTS = ("piano", "organ", "plucked", "square_lead", "strings", "bell", "bass")
TEMPO_CLASSES = {"slow": (60, 76), "medium": (92, 112), "fast": (132, 160)}
PITCH_CLASSES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
MODES = ("major", "minor")
REGISTERS = {"low": 43, "mid": 62, "high": 81}  # MIDI pitch the melody centres on
LOUDNESS_DBFS = {"soft": -26.0, "medium": -18.0, "loud": -12.0}
TEXTURES = ("melody", "melody_chords", "arpeggio")
DRUMS_LEVEL = 0.6  # drum RMS relative to the music's (the loudness target applies to the music)
LABEL_VALUES = {
    "instrument": INSTRUMENTS,
    "tempo_class": tuple(TEMPO_CLASSES),
    "key": PITCH_CLASSES,
    "mode": MODES,
    "register": tuple(REGISTERS),
    "drums": (False, True),
    "loudness": tuple(LOUDNESS_DBFS),
    "texture": TEXTURES,
}
# Fixed seeds per split: held-out examples never share a (seed, index) with training ones.
SPLIT_SEEDS = {"train": 0, "validation": 1_000_003}

_SCALES = {"major": (0, 2, 4, 5, 7, 9, 11), "minor": (0, 2, 3, 5, 7, 8, 10)}
# Chord progressions as scale degrees (0 = tonic); minor's V uses the raised 7th.
_PROGRESSIONS = {
    "major": ((0, 3, 4, 0), (0, 5, 3, 4), (0, 4, 5, 3), (0, 3, 0, 4)),
    "minor": ((0, 3, 4, 0), (0, 5, 3, 4), (0, 3, 0, 4), (0, 5, 6, 4)),
}
# Bar rhythms in eighth notes (4/4).
_RHYTHMS = {
    "slow": ((4, 4), (2, 2, 4), (4, 2, 2), (3, 1, 4), (2, 2, 2, 2)),
    "medium": ((2, 2, 2, 2), (2, 1, 1, 2, 2), (3, 1, 2, 2), (2, 2, 4), (1, 1, 2, 2, 2)),
    "fast": ((1, 1, 1, 1, 2, 2), (2, 1, 1, 2, 1, 1), (1, 1, 2, 1, 1, 2), (2, 2, 1, 1, 2), (1, 1, 1, 1, 1, 1, 2)),
}


@dataclasses.dataclass(frozen=True)
class Note:
    start_s: float
    duration_s: float
    midi: float
    velocity: float  # linear gain, ~0.3-1
    voice: str  # "melody" | "chord" | "arpeggio"


@dataclasses.dataclass(frozen=True)
class Hit:
    start_s: float
    drum: str  # "kick" | "snare" | "hat"
    velocity: float


@dataclasses.dataclass(frozen=True)
class Score:
    """Everything a piece is rendered from; `labels` are what captions and detectors use."""

    labels: dict
    duration_s: float
    notes: tuple[Note, ...]
    hits: tuple[Hit, ...]

    def melody_pitch_at(self, times_s: np.ndarray) -> np.ndarray:
        """MIDI pitch of the sounding melody note at each time, NaN in rests (frame labels)."""
        out = np.full(len(times_s), np.nan)
        for n in self.notes:
            if n.voice in ("melody", "arpeggio"):
                out[(times_s >= n.start_s) & (times_s < n.start_s + n.duration_s)] = n.midi
        return out


def _rng(seed: int, index: int, stream: int = 0) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(index), stream])


def sample_labels(rng: np.random.Generator) -> dict:
    instrument = str(rng.choice(INSTRUMENTS))
    tempo_class = str(rng.choice(list(TEMPO_CLASSES)))
    lo, hi = TEMPO_CLASSES[tempo_class]
    register = "low" if instrument == "bass" else str(rng.choice(list(REGISTERS)))
    return {
        "instrument": instrument,
        "tempo_class": tempo_class,
        "bpm": int(rng.integers(lo, hi + 1)),
        "key": str(rng.choice(PITCH_CLASSES)),
        "mode": str(rng.choice(MODES)),
        "register": register,
        "drums": bool(rng.random() < 0.5),
        "loudness": str(rng.choice(list(LOUDNESS_DBFS))),
        "texture": str(rng.choice(TEXTURES)),
    }


def _tonic_midi(labels: dict) -> int:
    """The tonic nearest to 5 semitones below the register's centre: the melody (scale degrees
    -1..+8, mostly around the 3rd-5th) then sits on the centre."""
    anchor = REGISTERS[labels["register"]] - 5
    pc = PITCH_CLASSES.index(labels["key"])
    return anchor + ((pc - anchor + 6) % 12) - 6


def _degree_to_midi(tonic: int, mode: str, degree: int, raise_seventh: bool = False) -> int:
    scale = _SCALES[mode]
    octave, step = divmod(degree, 7)
    semis = scale[step] + (1 if raise_seventh and mode == "minor" and step == 6 else 0)
    return tonic + 12 * octave + semis


def _motif(rng, tempo_class: str, chord_root: int, prev_degree: int) -> list[tuple[int, int]]:
    """One bar of melody: (length in eighths, scale degree); strong beats on chord tones."""
    rhythm = _RHYTHMS[tempo_class][rng.integers(len(_RHYTHMS[tempo_class]))]
    out, pos, degree = [], 0, prev_degree
    for length in rhythm:
        step = int(rng.choice([-2, -1, -1, 0, 1, 1, 2, 3, -3]))
        step += 1 if degree < 1 else -1 if degree > 6 else 0  # drift back towards the middle
        degree = int(np.clip(degree + step, -1, 8))
        if pos % 4 == 0:  # beats 1 and 3: nearest chord tone
            tones = [chord_root + o for o in (-7, -5, -3, 0, 2, 4, 7, 9)]
            degree = min(tones, key=lambda t: (abs(t - degree), t))
            degree = int(np.clip(degree, -1, 8))
        out.append((length, degree))
        pos += length
    return out


def sample_score(seed: int, index: int, duration_s: float) -> Score:
    """The piece for (seed, index): labels, notes and drum hits covering `duration_s`."""
    if duration_s <= 0:
        raise ValueError(f"duration_s must be positive, got {duration_s}")
    rng = _rng(seed, index)
    labels = sample_labels(rng)  # first draw of this stream: `caption_of` relies on it
    beat = 60.0 / labels["bpm"]
    eighth, bar = beat / 2, beat * 4
    n_bars = int(math.ceil(duration_s / bar))
    mode, tonic = labels["mode"], _tonic_midi(labels)
    progression = _PROGRESSIONS[mode][rng.integers(len(_PROGRESSIONS[mode]))]

    # Melody: phrases of 4 bars = motifs A, A, B, A' (A' ends on the tonic).
    motifs: dict[int, list] = {}
    notes: list[Note] = []
    prev = 2
    for b in range(n_bars):
        chord = progression[b % 4]
        slot = (0, 0, 2, 0)[b % 4]
        if slot not in motifs or b % 8 == 6:  # the second phrase gets a new B
            motifs[slot] = _motif(rng, labels["tempo_class"], chord, prev)
            if slot == 0:  # phrases open on the tonic: the key (and mode) is heard at once
                motifs[0][0] = (motifs[0][0][0], 0)
        bar_notes = list(motifs[slot])
        if b % 4 == 3:  # cadence: last note back home
            bar_notes[-1] = (bar_notes[-1][0], 0)
        elif b % 4 == 1 and b == n_bars - 1:
            bar_notes[-1] = (bar_notes[-1][0], 0)
        t = b * bar
        for length, degree in bar_notes:
            if labels["texture"] != "arpeggio":
                vel = 0.8 + 0.2 * rng.random()
                # Harmonic minor (raised 7th): the leading tone tells minor from its relative major.
                midi = _degree_to_midi(tonic, mode, degree, raise_seventh=True)
                notes.append(Note(t, length * eighth, midi, vel, "melody"))
            t += length * eighth
            prev = degree
        # Close-position triad within the octave above the tonic.
        triad = sorted(
            tonic + (_degree_to_midi(tonic, mode, chord + d, raise_seventh=(chord == 4)) - tonic) % 12
            for d in (0, 2, 4)
        )
        if labels["texture"] == "melody_chords":  # quiet block chord an octave under the melody
            for m in triad:
                notes.append(Note(b * bar, bar * 0.95, m - 12, 0.2, "chord"))
        elif labels["texture"] == "arpeggio":  # triad tones up and down in eighths
            step = eighth
            cycle = triad + [triad[0] + 12] + triad[2:0:-1]
            for i in range(int(round(bar / step))):
                vel = 0.9 if i % 4 == 0 else 0.7
                notes.append(Note(b * bar + i * step, step, cycle[i % len(cycle)], vel, "arpeggio"))

    hits: list[Hit] = []
    if labels["drums"]:
        for b in range(n_bars):
            t0 = b * bar
            for i in range(8):  # hats on eighths, kick on 1 and 3 (+ the "and" of 3 sometimes), snare on 2 and 4
                hits.append(Hit(t0 + i * eighth, "hat", 0.5 if i % 2 else 0.7))
            for q in (0, 2):
                hits.append(Hit(t0 + q * beat, "kick", 1.0))
            if rng.random() < 0.5:
                hits.append(Hit(t0 + 2.5 * beat, "kick", 0.7))
            for q in (1, 3):
                hits.append(Hit(t0 + q * beat, "snare", 0.9))
    notes = [n for n in notes if n.start_s < duration_s]
    # Transpose by octaves so the melody's median pitch is within a tritone of the register's centre.
    lead = [n.midi for n in notes if n.voice != "chord"]
    shift = 12 * round((REGISTERS[labels["register"]] - float(np.median(lead))) / 12) if lead else 0
    notes = [dataclasses.replace(n, midi=n.midi + shift) for n in notes]
    hits = [h for h in hits if h.start_s < duration_s]
    return Score(labels, float(duration_s), tuple(notes), tuple(hits))


# ---------------------------------------------------------------------------------------
# Timbres. Each returns the note's waveform (unit-ish peak) for `n` samples.


def _hz(midi: float) -> float:
    return 440.0 * 2.0 ** ((midi - 69.0) / 12.0)


def _adsr(n: int, sr: int, attack: float, decay: float, sustain: float, release: float, held: int) -> np.ndarray:
    t = np.arange(n) / sr
    env = np.where(
        t < attack, t / max(attack, 1e-4), sustain + (1 - sustain) * np.exp(-(t - attack) / max(decay, 1e-4))
    )
    held_t = held / sr
    level_at_release = env[min(held, n - 1)]
    tail = level_at_release * np.exp(-(t - held_t) / max(release, 1e-4) * 3)
    return np.where(t < held_t, env, tail).astype(np.float32)


def _additive(
    f0: float,
    n: int,
    sr: int,
    amps: Sequence[float],
    ratios: Sequence[float],
    decays=None,
    phase_mod: np.ndarray | None = None,
) -> np.ndarray:
    """Sum of sinusoids at f0*ratio (skipping those above Nyquist), optional per-partial decay."""
    t = np.arange(n, dtype=np.float32) / sr
    out = np.zeros(n, np.float32)
    for i, (a, r) in enumerate(zip(amps, ratios)):
        # Python floats keep the arithmetic in float32 (numpy scalars would promote to float64).
        a, r, f = float(a), float(r), float(f0 * r)
        if f >= 0.45 * sr:
            break
        phase = (2 * np.pi * f) * t
        if phase_mod is not None:
            phase = phase + r * phase_mod
        part = a * np.sin(phase)
        if decays is not None:
            part *= np.exp(t * -float(decays[i]))
        out += part
    return out


def _wavetable(
    f0: float,
    n: int,
    sr: int,
    amps: Sequence[float],
    harmonics: Sequence[int],
    phase_mod: np.ndarray | None = None,
    size: int = 2048,
) -> np.ndarray:
    """Like `_additive` for integer harmonics without per-partial decay, but reads one
    band-limited period from a table (linear interpolation): one lookup per sample instead of
    one sine per partial, which keeps rich timbres (strings, square lead) fast."""
    grid = np.arange(size) / size
    table = np.zeros(size + 1, np.float32)
    for a, h in zip(amps, harmonics):
        if f0 * h >= 0.45 * sr:
            break
        table[:size] += a * np.sin(2 * np.pi * h * grid)
    table[size] = table[0]
    cycles = f0 * np.arange(n, dtype=np.float64) / sr
    if phase_mod is not None:
        cycles += phase_mod / (2 * np.pi)
    pos = (cycles % 1.0) * size
    i = pos.astype(np.int64)
    frac = (pos - i).astype(np.float32)
    return table[i] * (1 - frac) + table[i + 1] * frac


def _vibrato(n: int, sr: int, f0: float, depth_semitones: float, rate_hz: float = 5.5) -> np.ndarray:
    """Phase offset (radians at the fundamental) of a sinusoidal vibrato."""
    t = np.arange(n, dtype=np.float32) / sr
    dev = f0 * (2 ** (depth_semitones / 12) - 1)
    return (dev / rate_hz) * (1 - np.cos(2 * np.pi * rate_hz * t)).astype(np.float32)


def _piano(f0, n, held, sr, rng):
    k = np.arange(1, 11)
    ratios = k * np.sqrt(1 + 0.0004 * k**2)  # slight string inharmonicity
    amps = 1.0 / k**1.3
    decays = 1.2 + 0.6 * k * (f0 / 262) ** 0.5
    env = _adsr(n, sr, 0.004, 10.0, 1.0, 0.12, held)
    return _additive(f0, n, sr, amps, ratios, decays) * env


def _organ(f0, n, held, sr, rng):
    ratios = (1, 2, 3, 4, 6, 8)  # drawbar footages 8', 4', 2 2/3', 2', 1 1/3', 1' (no 16': it reads an octave low)
    amps = (1.0, 0.7, 0.5, 0.4, 0.25, 0.2)
    env = _adsr(n, sr, 0.01, 0.05, 1.0, 0.05, held)
    return _additive(f0, n, sr, amps, ratios) * env


def _karplus_strong(f0, n, held, sr, rng):
    """Plucked string: a noise burst circulating in a delay line with an averaging (lowpass)
    loss filter. Computed a period at a time (each period depends only on the previous one),
    so the Python loop runs n / period times rather than n."""
    period = sr / f0
    p = int(period)
    w = period - p  # fractional delay by linear interpolation between y[n-p] and y[n-p-1]
    gain = 0.996 ** (262 / max(f0, 50))  # longer sustain for low strings, like real ones
    y = np.zeros(n + p + 1, np.float32)
    burst = rng.uniform(-1, 1, p + 1).astype(np.float32)
    burst = np.convolve(burst, [0.5, 0.5], mode="same")  # soften the pluck
    y[: p + 1] = burst
    start = p + 1
    while start < len(y):
        stop = min(start + p, len(y))
        y[start:stop] = gain * (
            0.5 * (1 - w) * (y[start - p : stop - p] + y[start - p - 1 : stop - p - 1])
            + 0.5
            * w
            * (y[start - p - 1 : stop - p - 1] + y[start - p - 2 : stop - p - 2] if start - p - 2 >= 0 else 0.0)
        )
        start = stop
    out = y[:n]
    return out / (np.abs(out[: p + 1]).max() + 1e-6) * _adsr(n, sr, 0.001, 10.0, 1.0, 0.08, held)


def _square_lead(f0, n, held, sr, rng):
    k = np.arange(1, 40, 2)
    env = _adsr(n, sr, 0.01, 0.15, 0.75, 0.05, held)
    return 0.8 * _wavetable(f0, n, sr, 1.0 / k, k, phase_mod=_vibrato(n, sr, f0, 0.15, 6.0)) * env


def _strings(f0, n, held, sr, rng):
    k = np.arange(1, 16)
    amps = 1.0 / k**1.1
    vib = _vibrato(n, sr, f0, 0.12, 5.0)
    # Ensemble: three slightly detuned sawtooth-like voices.
    out = sum(_wavetable(f0 * d, n, sr, amps, k, phase_mod=vib) for d in (0.997, 1.0, 1.004)) / 3
    return out * _adsr(n, sr, 0.22, 0.3, 0.9, 0.25, held)


def _bell(f0, n, held, sr, rng):
    """FM bell: modulator at 3x the carrier (an integer ratio keeps the pitch at f0; 3.5 would
    put a common fundamental at f0/2), a slightly detuned modulator for the metallic beating,
    and a modulation index decaying with the note."""
    t = np.arange(n, dtype=np.float32) / sr
    index = 4.0 * np.exp(-t * 2.5)
    mod = index * np.sin((2 * np.pi * 3.01 * f0) * t)
    if f0 * 3 * 4 > 0.45 * sr:  # keep the sidebands under Nyquist for high notes
        mod *= (0.45 * sr) / (f0 * 12)
    return np.sin(2 * np.pi * f0 * t + mod) * np.exp(-t * 1.8) * _adsr(n, sr, 0.002, 10, 1.0, 0.3, held)


def _bass(f0, n, held, sr, rng):
    k = np.arange(1, 9)
    decays = 2.0 + 3.0 * k
    env = _adsr(n, sr, 0.005, 0.25, 0.6, 0.06, held)
    return _additive(f0, n, sr, 1.0 / k**1.5, k, decays) * env


_TIMBRES = {
    "piano": _piano,
    "organ": _organ,
    "plucked": _karplus_strong,
    "square_lead": _square_lead,
    "strings": _strings,
    "bell": _bell,
    "bass": _bass,
}
_RELEASE_S = {"piano": 0.3, "organ": 0.1, "plucked": 0.2, "square_lead": 0.1, "strings": 0.5, "bell": 0.8, "bass": 0.1}


def _drum(kind: str, sr: int, rng: np.random.Generator) -> np.ndarray:
    if kind == "kick":  # pitch sweep 150 -> 45 Hz with a fast decay
        t = np.arange(int(0.35 * sr), dtype=np.float32) / sr
        freq = 45 + 105 * np.exp(-t * 25)
        return np.sin(2 * np.pi * np.cumsum(freq) / sr) * np.exp(-t * 9)
    if kind == "snare":  # body tone + band-limited noise
        t = np.arange(int(0.2 * sr), dtype=np.float32) / sr
        noise = rng.standard_normal(len(t)).astype(np.float32)
        noise = np.diff(noise, prepend=0)  # tilt up (cheap high-pass)
        return 0.6 * np.sin(2 * np.pi * 185 * t) * np.exp(-t * 30) + 0.5 * noise * np.exp(-t * 22)
    t = np.arange(int(0.06 * sr), dtype=np.float32) / sr  # hat: high-passed noise, very short
    noise = rng.standard_normal(len(t)).astype(np.float32)
    return 0.35 * np.diff(np.diff(noise, prepend=0), prepend=0) * np.exp(-t * 70)


def render_score(score: Score, sample_rate: int, seed: int = 0) -> np.ndarray:
    """Renders `score` at `sample_rate`: float32 mono of exactly duration * rate samples in [-1, 1]."""
    if sample_rate < 4000:
        raise ValueError(f"sample_rate must be at least 4000 Hz, got {sample_rate}")
    rng = np.random.default_rng([seed, 7])
    sr, labels = sample_rate, score.labels
    total = int(round(score.duration_s * sr))
    timbre, release = _TIMBRES[labels["instrument"]], _RELEASE_S[labels["instrument"]]
    music = np.zeros(total + int(2 * sr), np.float32)
    for note in score.notes:
        held = max(int(note.duration_s * 0.92 * sr), 1)
        n = held + int(release * sr)
        start = int(note.start_s * sr)
        music[start : start + n] += note.velocity * timbre(_hz(note.midi), n, held, sr, rng)[: len(music) - start]
    music = music[:total]
    # Level the music alone, so drums neither hide it nor change the loudness class.
    music *= 10 ** (LOUDNESS_DBFS[labels["loudness"]] / 20) / (np.sqrt(np.mean(music**2)) + 1e-9)
    if score.hits:
        drums = np.zeros(total + int(sr), np.float32)
        kit = {k: _drum(k, sr, rng) for k in ("kick", "snare", "hat")}
        for h in score.hits:
            start = int(h.start_s * sr)
            drums[start : start + len(kit[h.drum])] += h.velocity * kit[h.drum]
        drums = drums[:total]
        music += drums * (DRUMS_LEVEL * np.sqrt(np.mean(music**2)) / (np.sqrt(np.mean(drums**2)) + 1e-9))
    fade = min(int(0.02 * sr), total)
    music[total - fade :] *= np.linspace(1, 0, fade, dtype=np.float32)
    return _limit(music, sr)


def _limit(x: np.ndarray, sr: int, ceiling: float = 0.99) -> np.ndarray:
    """Look-ahead peak limiter: gain falls only around the peaks (5 ms hold, smoothed), so a
    clip's level (its loudness label) survives where rescaling the whole clip would not."""
    if np.abs(x).max() <= ceiling:
        return x
    width = max(int(0.005 * sr), 1)
    gain = np.minimum(1.0, ceiling / (maximum_filter1d(np.abs(x), width) + 1e-9))
    gain = np.minimum(uniform_filter1d(gain, width), ceiling / (np.abs(x) + 1e-9))
    return (x * gain).astype(np.float32)


@dataclasses.dataclass
class SyntheticExample(Example):
    score: Optional[Score] = None  # what the audio was rendered from (frame-level pitch labels)


def labels_of(seed: int, index: int) -> dict:
    """The labels of example `index` of the stream `seed`, without sampling its score."""
    return sample_labels(_rng(seed, index))


def labels_of_id(example_id: str) -> dict:
    """The labels of a rendered example from its id, 'synthetic-<seed>-<index>' (as `render` names it)."""
    match = re.fullmatch(r"synthetic-(\d+)-(\d+)", example_id)
    if not match:
        raise ValueError(f"{example_id!r} is not a synthetic example id ('synthetic-<seed>-<index>')")
    return labels_of(int(match.group(1)), int(match.group(2)))


def caption_of(seed: int, index: int) -> str:
    """The caption of example `index` of the stream `seed` without sampling the score or rendering
    audio: `sample_score` draws the labels first from `_rng(seed, index)`, so they are known from
    that draw alone, and the caption has its own stream. Equals `render(seed, index).caption` at
    any sample rate and duration."""
    return caption_for(labels_of(seed, index), _rng(seed, index, stream=1))


def render(seed: int, index: int, *, sample_rate: int = 16000, duration_s: float = 10.0) -> SyntheticExample:
    """Example `index` of the stream `seed`: identical for identical arguments."""
    score = sample_score(seed, index, duration_s)
    audio = render_score(score, sample_rate, seed=int(seed) * 1_000_003 + int(index))
    caption = caption_for(score.labels, _rng(seed, index, stream=1))
    return SyntheticExample(
        f"synthetic-{seed}-{index}", audio.astype(np.float32), sample_rate, caption, dict(score.labels), score=score
    )


class SyntheticSource:
    """The synthetic source with the same interface as the real ones (data/sources.py)."""

    def __init__(
        self,
        *,
        sample_rate: int = 16000,
        duration_s: float = 10.0,
        num_examples: int = 10_000,
        num_validation_examples: int = 200,
    ):
        if num_examples <= 0 or num_validation_examples <= 0:
            raise ValueError("num_examples and num_validation_examples must be positive")
        self.name = f"synthetic@{sample_rate}Hz"
        self.sample_rate, self.duration_s = sample_rate, duration_s
        self.sizes = {"train": num_examples, "validation": num_validation_examples}
        self.report = BadInputReport(self.name)  # rendered audio is never bad; kept for the interface

    def examples(self, split: str) -> Iterator[SyntheticExample]:
        if split not in SPLIT_SEEDS:
            raise ValueError(f"unknown split {split!r} of {self.name}; known: {', '.join(SPLIT_SEEDS)}")
        for i in range(self.sizes[split]):
            yield render(SPLIT_SEEDS[split], i, sample_rate=self.sample_rate, duration_s=self.duration_s)

    def captions(self, split: str, limit: Optional[int] = None) -> Iterator[str]:
        """The captions of `examples(split)` (the first `limit` of them), in order, without
        rendering audio (microseconds per caption instead of tens of milliseconds per clip)."""
        if split not in SPLIT_SEEDS:
            raise ValueError(f"unknown split {split!r} of {self.name}; known: {', '.join(SPLIT_SEEDS)}")
        if limit is not None and limit < 0:
            raise ValueError(f"limit must be None or >= 0, got {limit}")
        count = self.sizes[split] if limit is None else min(int(limit), self.sizes[split])
        for i in range(count):
            yield caption_of(SPLIT_SEEDS[split], i)
