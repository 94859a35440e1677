"""The embedded synthetic music source: procedurally rendered, captioned, labelled music.

Deterministic by (seed, index) at any sample rate and duration. A piece is sampled as a
*score* (style, metre, key, mode, tempo, chord progression, a melody built from repeated
motifs, an accompaniment pattern, drum pattern) and then rendered with one of nine
instruments, each in two timbre sources: *additive* (numpy oscillators, Karplus-Strong,
FM) or *sampled* (the General MIDI SoundFont inside the pretty_midi package, played by
data/soundfont.py). Each example carries the labels it was made from, so text adherence
is measurable:

  instrument     piano | organ | plucked | square_lead | strings | bell | bass | brass | choir
                 (the melody's instrument)
  timbre_source  additive | sampled (drawn per example with probability `sampled_fraction`)
  tempo_class    slow (60-76 BPM) | medium (92-112) | fast (132-160), with `bpm`
  key, mode      tonic pitch class name, major | minor
  register       low | mid | high (where the melody sits; bass is always low)
  metre          3/4 | 4/4 (bar length of melody rhythms, chords, arpeggios, drum patterns)
  style          plain | rock | waltz | ballad | march
                 rock: 4/4, medium/fast, drums (kick and snare backbeat, hats, open hat, crash)
                 waltz: 3/4, oom-pah-pah accompaniment (texture melody_chords)
                 ballad: slow/medium, broken-chord accompaniment or an arpeggio lead, ride cymbal
                 march: 4/4, medium/fast, drums (snare eighths, bass drum on 1 and 3), oom-pah
                 plain: block chords, the basic kit
  texture        melody | melody_chords | arpeggio (arpeggio: the arpeggio is the lead line)
  accompaniment  None | an instrument other than `instrument`, playing the chords (melody_chords)
                 or a bass line (arpeggio); None with melody_chords: the melody's instrument
                 plays its own quiet chords. Always None with texture melody.
  drums          True | False
  dynamics       steady | crescendo | diminuendo (a 12 dB gain ramp across the clip)
  loudness       soft | medium | loud (RMS of the whole clip's music -26 / -18 / -12 dBFS)

Pure numpy (Karplus-Strong computed a period at a time, samples resampled once and cached),
so it renders far faster than real time on one core; see bench/bench_synthetic.py.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from typing import Iterator, Optional, Sequence

import numpy as np
from scipy.ndimage import maximum_filter1d, uniform_filter1d

from musiclm_jax.data import captions, soundfont
from musiclm_jax.data.bad_input import BadInputReport
from musiclm_jax.data.sources import Example

INSTRUMENTS = ("piano", "organ", "plucked", "square_lead", "strings", "bell", "bass", "brass", "choir")
TIMBRE_SOURCES = ("additive", "sampled")
DEFAULT_SAMPLED_FRACTION = 0.5
TEMPO_CLASSES = {"slow": (60, 76), "medium": (92, 112), "fast": (132, 160)}
PITCH_CLASSES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
MODES = ("major", "minor")
REGISTERS = {"low": 43, "mid": 62, "high": 81}  # MIDI pitch the melody centres on
LOUDNESS_DBFS = {"soft": -26.0, "medium": -18.0, "loud": -12.0}
TEXTURES = ("melody", "melody_chords", "arpeggio")
METRES = ("3/4", "4/4")
STYLES = ("plain", "rock", "waltz", "ballad", "march")
DYNAMICS = ("steady", "crescendo", "diminuendo")
DYNAMICS_RANGE_DB = 12.0  # crescendo: -12 dB -> 0 dB across the clip (before levelling)
DRUMS = ("kick", "snare", "hat", "open_hat", "ride", "crash")
DRUMS_LEVEL = 0.6  # drum RMS relative to the music's (the loudness target applies to the music)
LABEL_VALUES = {
    "instrument": INSTRUMENTS,
    "timbre_source": TIMBRE_SOURCES,
    "tempo_class": tuple(TEMPO_CLASSES),
    "key": PITCH_CLASSES,
    "mode": MODES,
    "register": tuple(REGISTERS),
    "metre": METRES,
    "style": STYLES,
    "texture": TEXTURES,
    "accompaniment": (None,) + INSTRUMENTS,
    "drums": (False, True),
    "dynamics": DYNAMICS,
    "loudness": tuple(LOUDNESS_DBFS),
}
# Fixed seeds per split: held-out examples never share a (seed, index) with training ones.
SPLIT_SEEDS = {"train": 0, "validation": 1_000_003}

# What each style allows (the labels never contradict the audio) and how often it is drawn.
_STYLE_WEIGHTS = {"plain": 0.4, "rock": 0.15, "waltz": 0.15, "ballad": 0.15, "march": 0.15}
_STYLE_TEMPI = {
    "plain": tuple(TEMPO_CLASSES),
    "rock": ("medium", "fast"),
    "waltz": tuple(TEMPO_CLASSES),
    "ballad": ("slow", "medium"),
    "march": ("medium", "fast"),
}
_STYLE_METRES = {"plain": METRES, "rock": ("4/4",), "waltz": ("3/4",), "ballad": METRES, "march": ("4/4",)}
_STYLE_TEXTURES = {
    "plain": TEXTURES,
    "rock": TEXTURES,
    "waltz": ("melody_chords",),
    "ballad": ("melody_chords", "arpeggio"),
    "march": TEXTURES,
}
_STYLE_DRUMS = {"rock": True, "march": True}  # the others: drums with probability 2/7

_SCALES = {"major": (0, 2, 4, 5, 7, 9, 11), "minor": (0, 2, 3, 5, 7, 8, 10)}
# Chord progressions as scale degrees (0 = tonic); minor's V uses the raised 7th.
_PROGRESSIONS = {
    "major": ((0, 3, 4, 0), (0, 5, 3, 4), (0, 4, 5, 3), (0, 3, 0, 4)),
    "minor": ((0, 3, 4, 0), (0, 5, 3, 4), (0, 3, 0, 4), (0, 5, 6, 4)),
}
# Bar rhythms in eighth notes, per metre and tempo class.
_RHYTHMS = {
    "4/4": {
        "slow": ((4, 4), (2, 2, 4), (4, 2, 2), (3, 1, 4), (2, 2, 2, 2)),
        "medium": ((2, 2, 2, 2), (2, 1, 1, 2, 2), (3, 1, 2, 2), (2, 2, 4), (1, 1, 2, 2, 2)),
        "fast": ((1, 1, 1, 1, 2, 2), (2, 1, 1, 2, 1, 1), (1, 1, 2, 1, 1, 2), (2, 2, 1, 1, 2), (1, 1, 1, 1, 1, 1, 2)),
    },
    "3/4": {
        "slow": ((6,), (4, 2), (2, 2, 2), (3, 1, 2), (2, 4)),
        "medium": ((2, 2, 2), (2, 1, 1, 2), (3, 1, 2), (4, 2), (1, 1, 2, 2)),
        "fast": ((1, 1, 1, 1, 2), (2, 1, 1, 2), (1, 1, 2, 1, 1), (2, 2, 1, 1), (1, 1, 1, 1, 1, 1)),
    },
}


def beats_per_bar(labels: dict) -> int:
    return 3 if labels.get("metre") == "3/4" else 4


@dataclasses.dataclass(frozen=True)
class Note:
    start_s: float
    duration_s: float
    midi: float
    velocity: float  # linear gain, ~0.2-1
    voice: str  # "melody" | "arpeggio" (the lead) | "chord" | "bass" (the accompaniment)
    instrument: str  # who plays it: the labels' instrument for the lead, accompaniment or instrument otherwise


@dataclasses.dataclass(frozen=True)
class Hit:
    start_s: float
    drum: str  # one of DRUMS
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


def _choice(rng: np.random.Generator, values: Sequence, p=None):
    return values[int(rng.choice(len(values), p=p))]


def sample_labels(rng: np.random.Generator) -> dict:
    """Every label but `timbre_source` (its own stream: see `timbre_source_of`), style first
    so its constraints hold: waltz => 3/4 + melody_chords, rock/march => 4/4 + drums, ..."""
    instrument = str(rng.choice(INSTRUMENTS))
    style = _choice(rng, STYLES, p=[_STYLE_WEIGHTS[s] for s in STYLES])
    tempo_class = _choice(rng, _STYLE_TEMPI[style])
    lo, hi = TEMPO_CLASSES[tempo_class]
    bpm = int(rng.integers(lo, hi + 1))
    key = str(rng.choice(PITCH_CLASSES))
    mode = str(rng.choice(MODES))
    register = "low" if instrument == "bass" else str(rng.choice(list(REGISTERS)))
    metre = _choice(rng, _STYLE_METRES[style])
    texture = _choice(rng, _STYLE_TEXTURES[style])
    accompaniment = None
    if texture != "melody" and rng.random() < 0.6:
        accompaniment = _choice(rng, [i for i in INSTRUMENTS if i != instrument])
    # Drawn for every style (the stream stays aligned); rock and march (30%) always have drums,
    # the others with probability 2/7: half of all pieces have drums.
    drums = bool(rng.random() < 2 / 7)
    drums = _STYLE_DRUMS.get(style, drums)
    return {
        "instrument": instrument,
        "tempo_class": tempo_class,
        "bpm": bpm,
        "key": key,
        "mode": mode,
        "register": register,
        "metre": metre,
        "style": style,
        "texture": texture,
        "accompaniment": accompaniment,
        "drums": drums,
        "dynamics": _choice(rng, DYNAMICS, p=[0.5, 0.25, 0.25]),
        "loudness": str(rng.choice(list(LOUDNESS_DBFS))),
    }


def timbre_source_of(seed: int, index: int, sampled_fraction: float = DEFAULT_SAMPLED_FRACTION) -> str:
    """'sampled' with probability `sampled_fraction`, from a stream of its own: for a given
    (seed, index) raising the fraction only ever turns additive examples into sampled ones."""
    if not 0.0 <= sampled_fraction <= 1.0:
        raise ValueError(f"sampled_fraction must be in [0, 1], got {sampled_fraction}")
    return "sampled" if _rng(seed, index, stream=2).random() < sampled_fraction else "additive"


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


def _motif(rng, rhythms: Sequence, strong: Sequence[int], chord_root: int, prev_degree: int) -> list[tuple[int, int]]:
    """One bar of melody: (length in eighths, scale degree); strong beats on chord tones."""
    rhythm = rhythms[rng.integers(len(rhythms))]
    out, pos, degree = [], 0, prev_degree
    for length in rhythm:
        step = int(rng.choice([-2, -1, -1, 0, 1, 1, 2, 3, -3]))
        step += 1 if degree < 1 else -1 if degree > 6 else 0  # drift back towards the middle
        degree = int(np.clip(degree + step, -1, 8))
        if pos in strong:  # beats 1 and 3 (4/4) or 1 (3/4): nearest chord tone
            tones = [chord_root + o for o in (-7, -5, -3, 0, 2, 4, 7, 9)]
            degree = min(tones, key=lambda t: (abs(t - degree), t))
            degree = int(np.clip(degree, -1, 8))
        out.append((length, degree))
        pos += length
    return out


# Note velocities of the accompaniment (the melody's are 0.8-1): its own chords under the melody
# instrument, and a second instrument (quieter: a sustained one under a decaying lead must not
# take over the pitch a listener or pitch tracker follows).
CHORD_VELOCITY, ACCOMPANIMENT_VELOCITY = 0.2, 0.13


def _accompaniment(
    style: str, bpb: int, beat: float, triad: list[int], player: str, t0: float, velocity: float
) -> list[Note]:
    """One bar of the chord part (texture melody_chords), in `style`'s pattern, an octave under
    the triad. A bass plays the chords' roots only, another octave down."""
    root, upper = triad[0] - 24, [m - 12 for m in triad]
    if style == "waltz":  # oom-pah-pah
        events = [(0, 1.0, [root])] + [(b, 0.8, upper) for b in range(1, bpb)]
    elif style == "march":  # oom-pah: bass on 1 and 3, chord on 2 and 4
        events = [(b, 0.9, [root] if b % 2 == 0 else upper) for b in range(bpb)]
    elif style == "rock":  # the chord struck on every beat
        events = [(b, 0.9, upper) for b in range(bpb)]
    elif style == "ballad":  # broken chord in eighths: root, fifth, octave, third, ...
        cycle = [root + 12, upper[2], upper[0] + 12, upper[1] + 12, upper[0] + 12, upper[2]]
        events = [(i / 2, 0.5, [cycle[i % len(cycle)]]) for i in range(2 * bpb)]
    else:  # plain: one block chord held through the bar
        events = [(0, bpb * 0.95, upper)]
    notes = []
    for onset, length, pitches in events:
        if player == "bass":
            pitches = [min(pitches)]
        voice = "bass" if player == "bass" or pitches == [root] else "chord"
        for m in pitches:
            notes.append(Note(t0 + onset * beat, length * beat, m, velocity, voice, player))
    return notes


def _bass_line(style: str, bpb: int, beat: float, root: int, player: str, t0: float) -> list[Note]:
    """One bar of bass line under an arpeggio lead: the chord root per bar (plain, ballad),
    per beat (rock) or on 1 and 3 (march)."""
    onsets = {"rock": range(bpb), "march": range(0, bpb, 2)}.get(style, (0,))
    length = {"rock": 0.9, "march": 1.8}.get(style, bpb * 0.95)
    return [Note(t0 + b * beat, length * beat, root, ACCOMPANIMENT_VELOCITY, "bass", player) for b in onsets]


def _drum_bar(style: str, bpb: int, beat: float, t0: float, bar_index: int, rng) -> list[Hit]:
    """One bar of the kit in `style`'s pattern (every pattern keeps an eighth-note pulse)."""
    hits, eighths = [], 2 * bpb
    backbeats = (1, 3) if bpb == 4 else (1, 2)
    if style == "march":  # snare on every eighth, accents on the beats; bass drum on 1 and 3
        hits += [Hit(t0 + i * beat / 2, "snare", 0.9 if i % 2 == 0 else 0.45) for i in range(eighths)]
        hits += [Hit(t0 + b * beat, "kick", 1.0) for b in range(0, bpb, 2)]
        if bar_index % 2 == 0:
            hits.append(Hit(t0, "crash", 0.6))
        return hits
    if style == "ballad":  # ride on eighths, kick on 1 (and 3), soft backbeat
        hits += [Hit(t0 + i * beat / 2, "ride", 0.6 if i % 2 == 0 else 0.4) for i in range(eighths)]
        hits += [Hit(t0 + b * beat, "kick", 0.9) for b in range(0, bpb, 2 if bpb == 4 else 3)]
        hits += [Hit(t0 + b * beat, "snare", 0.6) for b in backbeats]
        return hits
    open_last = style == "rock" and bar_index % 2 == 1
    for i in range(eighths):  # hats on eighths
        drum = "open_hat" if open_last and i == eighths - 1 else "hat"
        hits.append(Hit(t0 + i * beat / 2, drum, 0.5 if i % 2 else 0.7))
    if style == "waltz":  # kick on 1, soft snare on 2 and 3
        hits.append(Hit(t0, "kick", 1.0))
        hits += [Hit(t0 + b * beat, "snare", 0.5) for b in (1, 2)]
        return hits
    if bpb == 4:  # kick on 1 and 3 (+ the "and" of 3 sometimes), snare on 2 and 4
        hits += [Hit(t0 + q * beat, "kick", 1.0) for q in (0, 2)]
        if rng.random() < 0.5:
            hits.append(Hit(t0 + 2.5 * beat, "kick", 0.7))
    else:  # 3/4: kick on 1, snare on 2 and 3
        hits.append(Hit(t0, "kick", 1.0))
    hits += [Hit(t0 + q * beat, "snare", 1.0 if style == "rock" else 0.9) for q in backbeats]
    if style == "rock" and bar_index % 4 == 0:
        hits.append(Hit(t0, "crash", 0.7))
    return hits


def sample_score(seed: int, index: int, duration_s: float, sampled_fraction: float = DEFAULT_SAMPLED_FRACTION) -> Score:
    """The piece for (seed, index): labels, notes and drum hits covering `duration_s`."""
    if duration_s <= 0:
        raise ValueError(f"duration_s must be positive, got {duration_s}")
    rng = _rng(seed, index)
    labels = sample_labels(rng)  # first draw of this stream: `caption_of` relies on it
    labels["timbre_source"] = timbre_source_of(seed, index, sampled_fraction)
    style, texture, lead = labels["style"], labels["texture"], labels["instrument"]
    chord_player = labels["accompaniment"] or lead
    bpb = beats_per_bar(labels)
    beat = 60.0 / labels["bpm"]
    eighth, bar = beat / 2, beat * bpb
    n_bars = int(math.ceil(duration_s / bar))
    mode, tonic = labels["mode"], _tonic_midi(labels)
    progression = _PROGRESSIONS[mode][rng.integers(len(_PROGRESSIONS[mode]))]
    rhythms = _RHYTHMS[labels["metre"]][labels["tempo_class"]]
    strong = (0, 4) if bpb == 4 else (0,)

    # Melody: phrases of 4 bars = motifs A, A, B, A' (A' ends on the tonic).
    motifs: dict[int, list] = {}
    notes: list[Note] = []
    prev = 2
    for b in range(n_bars):
        chord = progression[b % 4]
        slot = (0, 0, 2, 0)[b % 4]
        if slot not in motifs or b % 8 == 6:  # the second phrase gets a new B
            motifs[slot] = _motif(rng, rhythms, strong, chord, prev)
            if slot == 0:  # phrases open on the tonic: the key (and mode) is heard at once
                motifs[0][0] = (motifs[0][0][0], 0)
        bar_notes = list(motifs[slot])
        if b % 4 == 3:  # cadence: last note back home
            bar_notes[-1] = (bar_notes[-1][0], 0)
        elif b % 4 == 1 and b == n_bars - 1:
            bar_notes[-1] = (bar_notes[-1][0], 0)
        t = b * bar
        for length, degree in bar_notes:
            if texture != "arpeggio":
                vel = 0.8 + 0.2 * rng.random()
                # Harmonic minor (raised 7th): the leading tone tells minor from its relative major.
                midi = _degree_to_midi(tonic, mode, degree, raise_seventh=True)
                notes.append(Note(t, length * eighth, midi, vel, "melody", lead))
            t += length * eighth
            prev = degree
        # Close-position triad within the octave above the tonic.
        triad = sorted(
            tonic + (_degree_to_midi(tonic, mode, chord + d, raise_seventh=(chord == 4)) - tonic) % 12
            for d in (0, 2, 4)
        )
        if texture == "melody_chords":  # quiet accompaniment an octave under the melody
            velocity = ACCOMPANIMENT_VELOCITY if labels["accompaniment"] else CHORD_VELOCITY
            notes += _accompaniment(style, bpb, beat, triad, chord_player, b * bar, velocity)
        elif texture == "arpeggio":  # triad tones up and down in eighths: the lead line
            cycle = triad + [triad[0] + 12] + triad[2:0:-1]
            for i in range(2 * bpb):
                vel = 0.9 if i % 4 == 0 else 0.7
                notes.append(Note(b * bar + i * eighth, eighth, cycle[i % len(cycle)], vel, "arpeggio", lead))
            if labels["accompaniment"]:
                notes += _bass_line(style, bpb, beat, triad[0] - 24, labels["accompaniment"], b * bar)

    hits: list[Hit] = []
    if labels["drums"]:
        for b in range(n_bars):
            hits += _drum_bar(style, bpb, beat, b * bar, b, rng)
    notes = [n for n in notes if n.start_s < duration_s]
    # Transpose by octaves so the melody's median pitch is within a tritone of the register's centre.
    lead_pitches = [n.midi for n in notes if n.voice in ("melody", "arpeggio")]
    shift = 12 * round((REGISTERS[labels["register"]] - float(np.median(lead_pitches))) / 12) if lead_pitches else 0
    notes = [dataclasses.replace(n, midi=n.midi + shift) for n in notes]
    # The accompaniment no lower than E1: all of it octaves up where it would be (its shape kept).
    backing = [n.midi for n in notes if n.voice in ("chord", "bass")]
    lift = 12 * math.ceil(max(28 - min(backing), 0) / 12) if backing else 0
    notes = [dataclasses.replace(n, midi=n.midi + lift) if n.voice in ("chord", "bass") else n for n in notes]
    hits = [h for h in sorted(hits, key=lambda h: h.start_s) if h.start_s < duration_s]
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
    one sine per partial, which keeps rich timbres (strings, square lead) fast. Tables are
    cached: a piece repeats its pitches."""
    count = 0
    for h in harmonics:
        if f0 * h >= 0.45 * sr:
            break
        count += 1
    table = _table(tuple(float(a) for a in amps[:count]), tuple(int(h) for h in harmonics[:count]), size)
    cycles = f0 * np.arange(n, dtype=np.float64) / sr
    if phase_mod is not None:
        cycles += phase_mod / (2 * np.pi)
    pos = (cycles % 1.0) * size
    i = pos.astype(np.int64)
    frac = (pos - i).astype(np.float32)
    return table[i] * (1 - frac) + table[i + 1] * frac


@functools.lru_cache(maxsize=2048)
def _table(amps: tuple, harmonics: tuple, size: int) -> np.ndarray:
    """One period of sum(a * sin(2 pi h t)), `size` points + the wrap-around point (read-only)."""
    grid = np.arange(size) / size
    table = np.zeros(size + 1, np.float32)
    for a, h in zip(amps, harmonics):
        table[:size] += a * np.sin(2 * np.pi * h * grid)
    table[size] = table[0]
    table.flags.writeable = False
    return table


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


def _brass(f0, n, held, sr, rng):
    """Brass: a bright sawtooth that swells in (a mellow table cross-faded into a bright one
    as the note opens up) with a little late vibrato."""
    k = np.arange(1, 25)
    vib = _vibrato(n, sr, f0, 0.08, 5.0)
    mellow = _wavetable(f0, n, sr, 1.0 / k**2.2, k, phase_mod=vib)
    bright = _wavetable(f0, n, sr, 1.0 / k**0.9, k, phase_mod=vib)
    t = np.arange(n, dtype=np.float32) / sr
    opening = (1 - np.exp(-t / 0.12)).astype(np.float32)
    out = mellow + opening * (bright - mellow)
    return out * _adsr(n, sr, 0.06, 0.4, 0.8, 0.12, held)


# Vowel "ah" formants (Hz, bandwidth Hz, gain) for the choir's harmonic amplitudes.
_AH_FORMANTS = ((700.0, 110.0, 1.0), (1220.0, 120.0, 0.5), (2600.0, 160.0, 0.25))


def _choir(f0, n, held, sr, rng):
    """Choir "aah": three detuned sawtooth voices through the vowel's formant filter. The
    filter is applied to the harmonic amplitudes (exact for a held pitch), so each voice is one
    wavetable read; slow attack, gentle vibrato."""
    k = np.arange(1, 41)
    f = f0 * k
    formant = sum(g / (1 + ((f - fc) / bw) ** 2) for fc, bw, g in _AH_FORMANTS)
    amps = (1.0 / k) * (0.08 + formant)
    vib = _vibrato(n, sr, f0, 0.1, 5.2)
    out = sum(_wavetable(f0 * d, n, sr, amps, k, phase_mod=vib) for d in (0.994, 1.0, 1.006)) / 3
    return out * _adsr(n, sr, 0.15, 0.3, 0.9, 0.3, held)


_TIMBRES = {
    "piano": _piano,
    "organ": _organ,
    "plucked": _karplus_strong,
    "square_lead": _square_lead,
    "strings": _strings,
    "bell": _bell,
    "bass": _bass,
    "brass": _brass,
    "choir": _choir,
}
_RELEASE_S = {
    "piano": 0.3,
    "organ": 0.1,
    "plucked": 0.2,
    "square_lead": 0.1,
    "strings": 0.5,
    "bell": 0.8,
    "bass": 0.1,
    "brass": 0.15,
    "choir": 0.4,
}


def _noise(n: int, rng: np.random.Generator, tilt: int) -> np.ndarray:
    """White noise differentiated `tilt` times (each a cheap +6 dB/octave high-pass)."""
    x = rng.standard_normal(n).astype(np.float32)
    for _ in range(tilt):
        x = np.diff(x, prepend=0)
    return x


def _drum(kind: str, sr: int, rng: np.random.Generator) -> np.ndarray:
    if kind == "kick":  # pitch sweep 150 -> 45 Hz with a fast decay
        t = np.arange(int(0.35 * sr), dtype=np.float32) / sr
        freq = 45 + 105 * np.exp(-t * 25)
        return np.sin(2 * np.pi * np.cumsum(freq) / sr) * np.exp(-t * 9)
    if kind == "snare":  # body tone + band-limited noise
        t = np.arange(int(0.2 * sr), dtype=np.float32) / sr
        return 0.6 * np.sin(2 * np.pi * 185 * t) * np.exp(-t * 30) + 0.5 * _noise(len(t), rng, 1) * np.exp(-t * 22)
    if kind == "hat":  # high-passed noise, very short
        t = np.arange(int(0.06 * sr), dtype=np.float32) / sr
        return 0.35 * _noise(len(t), rng, 2) * np.exp(-t * 70)
    if kind == "open_hat":  # the same noise, ringing longer
        t = np.arange(int(0.35 * sr), dtype=np.float32) / sr
        return 0.3 * _noise(len(t), rng, 2) * np.exp(-t * 10)
    if kind == "ride":  # a metallic ping (inharmonic partials) over a soft noise wash
        t = np.arange(int(0.6 * sr), dtype=np.float32) / sr
        ping = sum(np.sin(2 * np.pi * min(f, 0.45 * sr) * t) for f in (3150.0, 4270.0, 5330.0)) / 3
        return (0.3 * ping * np.exp(-t * 12) + 0.15 * _noise(len(t), rng, 2) * np.exp(-t * 6)).astype(np.float32)
    if kind == "crash":  # a burst of bright noise with a long tail
        t = np.arange(int(1.2 * sr), dtype=np.float32) / sr
        return 0.3 * _noise(len(t), rng, 1) * np.exp(-t * 3.5)
    raise ValueError(f"unknown drum {kind!r}; known: {', '.join(DRUMS)}")


# ---------------------------------------------------------------------------------------
# Sampled timbres: the GM SoundFont (data/soundfont.py).


def _sampled(instrument: str):
    program = soundfont.GM_PROGRAMS[instrument]

    def play(f0, n, held, sr, rng, *, midi: float, velocity: float):
        return soundfont.play_note(program, midi, n, held, sr, velocity=int(round(127 * min(velocity, 1.0))))

    return play


@functools.lru_cache(maxsize=None)
def _release_s(source: str, instrument: str, midi: int) -> float:
    if source == "additive":
        return _RELEASE_S[instrument]
    return soundfont.release_seconds(0, soundfont.GM_PROGRAMS[instrument], midi)


@functools.lru_cache(maxsize=None)
def _level(source: str, instrument: str, sample_rate: int) -> float:
    """Gain that brings a 0.5 s middle-register note of the instrument to unit RMS: the lead
    and its accompaniment keep their balance whatever the two instruments are."""
    midi = 40 if instrument == "bass" else 62
    n = int(0.6 * sample_rate)
    note = _note(source, instrument, midi, 1.0, n, int(0.5 * sample_rate), sample_rate, np.random.default_rng(0))
    return 1.0 / (float(np.sqrt(np.mean(note**2))) + 1e-9)


def _note(source, instrument, midi, velocity, n, held, sr, rng) -> np.ndarray:
    if source == "sampled":
        return _sampled(instrument)(_hz(midi), n, held, sr, rng, midi=midi, velocity=velocity)
    return _TIMBRES[instrument](_hz(midi), n, held, sr, rng)


def _drum_sound(kind: str, source: str, sr: int, rng: np.random.Generator) -> np.ndarray:
    if source == "sampled":
        return soundfont.drum_hit(kind, sr)
    return _drum(kind, sr, rng)


def _dynamics_gain(dynamics: str, total: int) -> Optional[np.ndarray]:
    if dynamics == "steady":
        return None
    ramp_db = np.linspace(-DYNAMICS_RANGE_DB, 0.0, total, dtype=np.float32)
    if dynamics == "diminuendo":
        ramp_db = ramp_db[::-1]
    return (10.0 ** (ramp_db / 20.0)).astype(np.float32)


def render_score(score: Score, sample_rate: int, seed: int = 0) -> np.ndarray:
    """Renders `score` at `sample_rate`: float32 mono of exactly duration * rate samples in [-1, 1].

    The labels' `timbre_source` picks additive or sampled timbres (additive when absent);
    `dynamics` applies a gain ramp before the clip is levelled to its `loudness` target."""
    if sample_rate < 4000:
        raise ValueError(f"sample_rate must be at least 4000 Hz, got {sample_rate}")
    rng = np.random.default_rng([seed, 7])
    sr, labels = sample_rate, score.labels
    source = labels.get("timbre_source", "additive")
    if source not in TIMBRE_SOURCES:
        raise ValueError(f"unknown timbre_source {source!r}; known: {', '.join(TIMBRE_SOURCES)}")
    total = int(round(score.duration_s * sr))
    music = np.zeros(total + int(2 * sr), np.float32)
    for note in score.notes:
        held = max(int(note.duration_s * 0.92 * sr), 1)
        n = held + int(_release_s(source, note.instrument, int(round(note.midi))) * sr)
        start = int(note.start_s * sr)
        n = min(n, len(music) - start)
        gain = note.velocity * _level(source, note.instrument, sr)
        music[start : start + n] += gain * _note(source, note.instrument, note.midi, note.velocity, n, held, sr, rng)
    music = music[:total]
    ramp = _dynamics_gain(labels.get("dynamics", "steady"), total)
    if ramp is not None:
        music *= ramp
    # Level the music alone, so drums neither hide it nor change the loudness class.
    music *= 10 ** (LOUDNESS_DBFS[labels["loudness"]] / 20) / (np.sqrt(np.mean(music**2)) + 1e-9)
    if score.hits:
        drums = np.zeros(total + int(2 * sr), np.float32)
        kit = {k: _drum_sound(k, source, sr, rng) for k in sorted({h.drum for h in score.hits})}
        for h in score.hits:
            start = int(h.start_s * sr)
            drums[start : start + len(kit[h.drum])] += h.velocity * kit[h.drum]
        drums = drums[:total]
        if ramp is not None:
            drums *= ramp
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


def labels_of(seed: int, index: int, sampled_fraction: float = DEFAULT_SAMPLED_FRACTION) -> dict:
    """The labels of example `index` of the stream `seed`, without sampling its score (equal to
    `render(seed, index, sampled_fraction=...).labels`)."""
    labels = sample_labels(_rng(seed, index))
    labels["timbre_source"] = timbre_source_of(seed, index, sampled_fraction)
    return labels


def labels_of_id(example_id: str, sampled_fraction: float = DEFAULT_SAMPLED_FRACTION) -> dict:
    """The labels of a rendered example from its id, 'synthetic-<seed>-<index>' (as `render` names
    it); `sampled_fraction` as the source that rendered it had it."""
    match = re.fullmatch(r"synthetic-(\d+)-(\d+)", example_id)
    if not match:
        raise ValueError(f"{example_id!r} is not a synthetic example id ('synthetic-<seed>-<index>')")
    return labels_of(int(match.group(1)), int(match.group(2)), sampled_fraction)


def captions_of(
    seed: int,
    index: int,
    sampled_fraction: float = DEFAULT_SAMPLED_FRACTION,
    *,
    family: str = "train",
    num: int = 1,
    require: tuple = (),
) -> list:
    """`num` distinct Captions (text + the label keys it states) of example `index` of the stream
    `seed`, without sampling the score or rendering audio: the labels come from their own draw
    (`labels_of`) and each caption family from its own stream. The first training-family one is
    `render(...).caption`, the `NUM_VARIANTS` first its `caption_variants`. `require`: label keys
    every caption must state (drawn from a stream of their own)."""
    stream = {"train": 1, "heldout": 101}[family] + (1000 if require else 0)
    labels, rng = labels_of(seed, index, sampled_fraction), _rng(seed, index, stream=stream)
    if require:
        return [captions.make_caption(labels, rng, family, require=require) for _ in range(num)]
    return captions.caption_variants(labels, rng, num, family)


def caption_of(seed: int, index: int, sampled_fraction: float = DEFAULT_SAMPLED_FRACTION) -> str:
    """The caption of example `index` of the stream `seed` (`render(seed, index).caption` at any
    sample rate and duration), without rendering audio."""
    return captions_of(seed, index, sampled_fraction)[0].text


def render(
    seed: int,
    index: int,
    *,
    sample_rate: int = 16000,
    duration_s: float = 10.0,
    sampled_fraction: float = DEFAULT_SAMPLED_FRACTION,
) -> SyntheticExample:
    """Example `index` of the stream `seed`: identical for identical arguments."""
    score = sample_score(seed, index, duration_s, sampled_fraction)
    audio = render_score(score, sample_rate, seed=int(seed) * 1_000_003 + int(index))
    variants = tuple(c.text for c in captions.caption_variants(score.labels, _rng(seed, index, stream=1)))
    return SyntheticExample(
        f"synthetic-{seed}-{index}",
        audio.astype(np.float32),
        sample_rate,
        variants[0],
        dict(score.labels),
        caption_variants=variants,
        score=score,
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
        sampled_fraction: float = DEFAULT_SAMPLED_FRACTION,
    ):
        """`sampled_fraction`: the share of examples rendered with the SoundFont's sampled
        instruments (label timbre_source), the rest additive; 0 = additive only, 1 = all sampled."""
        if num_examples <= 0 or num_validation_examples <= 0:
            raise ValueError("num_examples and num_validation_examples must be positive")
        if not 0.0 <= sampled_fraction <= 1.0:
            raise ValueError(f"sampled_fraction must be in [0, 1], got {sampled_fraction}")
        self.name = f"synthetic@{sample_rate}Hz"
        self.sample_rate, self.duration_s = sample_rate, duration_s
        self.sampled_fraction = float(sampled_fraction)
        self.sizes = {"train": num_examples, "validation": num_validation_examples}
        self.report = BadInputReport(self.name)  # rendered audio is never bad; kept for the interface

    def examples(self, split: str) -> Iterator[SyntheticExample]:
        if split not in SPLIT_SEEDS:
            raise ValueError(f"unknown split {split!r} of {self.name}; known: {', '.join(SPLIT_SEEDS)}")
        for i in range(self.sizes[split]):
            yield render(
                SPLIT_SEEDS[split],
                i,
                sample_rate=self.sample_rate,
                duration_s=self.duration_s,
                sampled_fraction=self.sampled_fraction,
            )

    def captions(self, split: str, limit: Optional[int] = None, *, variants: bool = False) -> Iterator[str]:
        """The captions of `examples(split)` (the first `limit` of them), in order, without
        rendering audio (microseconds per caption instead of tens of milliseconds per clip).
        `variants`: every example's `caption_variants` (training family) instead of its caption."""
        if split not in SPLIT_SEEDS:
            raise ValueError(f"unknown split {split!r} of {self.name}; known: {', '.join(SPLIT_SEEDS)}")
        if limit is not None and limit < 0:
            raise ValueError(f"limit must be None or >= 0, got {limit}")
        count = self.sizes[split] if limit is None else min(int(limit), self.sizes[split])
        for i in range(count):
            num = captions.NUM_VARIANTS if variants else 1
            for c in captions_of(SPLIT_SEEDS[split], i, self.sampled_fraction, num=num):
                yield c.text
