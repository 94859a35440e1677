"""Sampled instruments: the General MIDI SoundFont that ships inside the pretty_midi package.

`pretty_midi` carries TimGM6mb.sf2 (a 6 MB GM font, 128 melodic presets + drum kits) in its
wheel, so sampled timbres need nothing downloaded at run time. This module parses the font
itself (RIFF chunks -> presets, instruments, zones, sample headers: a few struct.unpack
calls, no extra dependency) and plays notes and drum hits with numpy:

- zone selection by key and velocity (preset zones x instrument zones, global zones as
  defaults, preset generators added to instrument ones as the SF2 spec says);
- pitch from the root key (overridingRootKey or the sample's), coarse/fine tune, the
  sample's pitch correction and scaleTuning, by linear interpolation of a copy of the sample
  resampled once to the output rate (band-limited, cached);
- sample loops (sampleModes 1: loop throughout, 3: loop while held, then play to the end);
- the volume envelope (delay, attack, hold, decay, sustain, release in timecents /
  centibels, keynum-to-hold/decay) and initialAttenuation. Mono: stereo pairs are summed.

Not modelled: modulators (the note's velocity is applied as a linear gain instead), the
modulation envelope, LFOs, the low-pass filter, pan, reverb and chorus sends.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import math
import struct
from typing import Optional

import numpy as np
from scipy.signal import resample_poly

FONT_PACKAGE, FONT_FILE = "pretty_midi", "TimGM6mb.sf2"
DRUM_BANK = 128

# GM programs (0-based) of the synthetic source's instruments.
GM_PROGRAMS = {
    "piano": 0,  # Acoustic Grand Piano
    "bell": 10,  # Music Box (Celesta reads a semitone flat low down; Tubular Bells two octaves up)
    "organ": 18,  # Rock Organ ("Organ 3"; the drawbar and church organs' 16' stop reads an octave low)
    "plucked": 25,  # Acoustic Guitar (steel) (the nylon one's low notes read an octave high)
    "bass": 33,  # Electric Bass (finger)
    "strings": 48,  # String Ensemble 1
    "choir": 53,  # Voice Oohs (Choir Aahs' low samples read an octave high)
    "brass": 61,  # Brass Section
    "square_lead": 80,  # Lead 1 (square)
}
# GM percussion keys (bank 128, preset 0: the standard kit).
GM_DRUM_KEYS = {"kick": 36, "snare": 38, "hat": 42, "open_hat": 46, "crash": 49, "ride": 51}

# Generator operators (SF2 2.04, section 8.1.2) used here.
_START, _END, _START_LOOP, _END_LOOP = 0, 1, 2, 3
_START_COARSE, _END_COARSE, _START_LOOP_COARSE, _END_LOOP_COARSE = 4, 12, 45, 50
_DELAY, _ATTACK, _HOLD, _DECAY, _SUSTAIN, _RELEASE = 33, 34, 35, 36, 37, 38
_KEY_TO_HOLD, _KEY_TO_DECAY = 39, 40
_INSTRUMENT, _KEY_RANGE, _VEL_RANGE = 41, 43, 44
_ATTENUATION, _COARSE_TUNE, _FINE_TUNE, _SAMPLE_ID, _SAMPLE_MODES = 48, 51, 52, 53, 54
_SCALE_TUNING, _ROOT_KEY = 56, 58
_RANGES = (_KEY_RANGE, _VEL_RANGE)
_DEFAULTS = {
    _DELAY: -12000,
    _ATTACK: -12000,
    _HOLD: -12000,
    _DECAY: -12000,
    _RELEASE: -12000,
    _SUSTAIN: 0,
    _ATTENUATION: 0,
    _COARSE_TUNE: 0,
    _FINE_TUNE: 0,
    _SAMPLE_MODES: 0,
    _SCALE_TUNING: 100,
    _ROOT_KEY: -1,
    _KEY_TO_HOLD: 0,
    _KEY_TO_DECAY: 0,
}
# Longest release (100 dB fall), seconds. The font's strings and music box ring for 2-4 s, which
# turns an eighth-note arpeggio into a chord cluster that no longer has one pitch; notes are
# rendered to their -60 dB point.
_MAX_RELEASE_S = 0.8
_DRUM_MAX_S = {"open_hat": 0.4, "ride": 1.2, "crash": 2.0}  # longest hit kept, seconds


@dataclasses.dataclass(frozen=True)
class SampleHeader:
    name: str
    start: int
    end: int
    loop_start: int
    loop_end: int
    sample_rate: int
    original_pitch: int
    pitch_correction: int  # cents


@dataclasses.dataclass(frozen=True)
class Zone:
    """One playable zone: a sample with its fully resolved generators."""

    key_range: tuple[int, int]
    vel_range: tuple[int, int]
    sample: int  # index into SoundFont.samples
    gens: dict  # operator -> value (instrument + preset generators, ranges excluded)

    def get(self, oper: int) -> int:
        return self.gens.get(oper, _DEFAULTS.get(oper, 0))


@dataclasses.dataclass
class SoundFont:
    presets: dict  # (bank, program) -> (name, tuple[Zone, ...])
    samples: list  # SampleHeader per sample
    pcm: np.ndarray  # int16, every sample's data back to back

    def zones(self, bank: int, program: int, key: int, velocity: int) -> list[Zone]:
        if (bank, program) not in self.presets:
            raise KeyError(f"preset {bank}:{program} is not in the SoundFont")
        return [
            z
            for z in self.presets[(bank, program)][1]
            if z.key_range[0] <= key <= z.key_range[1] and z.vel_range[0] <= velocity <= z.vel_range[1]
        ]


def _chunks(data: bytes, start: int, stop: int) -> dict:
    """{fourcc: (offset, size)} of the RIFF chunks in data[start:stop]; LISTs by their type."""
    out, pos = {}, start
    while pos + 8 <= stop:
        cid, size = struct.unpack_from("<4sI", data, pos)
        key = data[pos + 8 : pos + 12] if cid in (b"LIST", b"RIFF") else cid
        out[key.decode("latin-1")] = (pos + 8, size)
        pos += 8 + size + (size & 1)
    return out


def _records(data: bytes, chunk: tuple[int, int], fmt: str) -> list[tuple]:
    offset, size = chunk
    return list(struct.iter_unpack(fmt, data[offset : offset + size]))


def _name(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("latin-1").strip()


def _zone_gens(bags, gens, first: int, stop: int, terminal: int) -> tuple[Optional[dict], list[dict]]:
    """(global zone's generators or None, the other zones' generators) of bags[first:stop]."""
    zones = []
    for b in range(first, stop):
        z = {}
        for oper, amount in gens[bags[b][0] : bags[b + 1][0]]:
            if oper in _RANGES:
                z[oper] = (amount & 0xFF, amount >> 8)
            else:
                z[oper] = amount - 0x10000 if amount >= 0x8000 and oper not in (_INSTRUMENT, _SAMPLE_ID) else amount
        zones.append(z)
    if zones and terminal not in zones[0]:
        return zones[0], [z for z in zones[1:] if terminal in z]
    return None, [z for z in zones if terminal in z]


def _intersect(a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int]:
    return max(a[0], b[0]), min(a[1], b[1])


def parse(data: bytes) -> SoundFont:
    """A SoundFont 2 file's presets (zones resolved), sample headers and 16-bit sample data."""
    if data[:4] != b"RIFF" or data[8:12] != b"sfbk":
        raise ValueError("not a SoundFont 2 file (no RIFF 'sfbk' header)")
    top = _chunks(data, 12, len(data))
    if "sdta" not in top or "pdta" not in top:
        raise ValueError("SoundFont lacks its sdta or pdta list")
    sdta = _chunks(data, top["sdta"][0] + 4, sum(top["sdta"]))
    pdta = _chunks(data, top["pdta"][0] + 4, sum(top["pdta"]))
    offset, size = sdta["smpl"]
    pcm = np.frombuffer(data, dtype="<i2", count=size // 2, offset=offset)
    phdr = _records(data, pdta["phdr"], "<20sHHHIII")
    pbag = _records(data, pdta["pbag"], "<HH")
    pgen = _records(data, pdta["pgen"], "<HH")
    inst = _records(data, pdta["inst"], "<20sH")
    ibag = _records(data, pdta["ibag"], "<HH")
    igen = _records(data, pdta["igen"], "<HH")
    shdr = _records(data, pdta["shdr"], "<20sIIIIIBbHH")
    samples = [SampleHeader(_name(s[0]), s[1], s[2], s[3], s[4], s[5], s[6], s[7]) for s in shdr[:-1]]

    instruments = []  # per instrument: list of (key range, vel range, generators)
    for i in range(len(inst) - 1):
        glob, zones = _zone_gens(ibag, igen, inst[i][1], inst[i + 1][1], _SAMPLE_ID)
        instruments.append([(glob or {}) | z for z in zones])  # the global zone as defaults

    presets = {}
    full = (0, 127)
    for p in range(len(phdr) - 1):
        name, program, bank = _name(phdr[p][0]), phdr[p][1], phdr[p][2]
        glob, zones = _zone_gens(pbag, pgen, phdr[p][3], phdr[p + 1][3], _INSTRUMENT)
        out = []
        for pz in zones:
            pgens = dict(glob or {})
            pgens.update(pz)
            for igens in instruments[pgens[_INSTRUMENT]]:
                keys = _intersect(pgens.get(_KEY_RANGE, full), igens.get(_KEY_RANGE, full))
                vels = _intersect(pgens.get(_VEL_RANGE, full), igens.get(_VEL_RANGE, full))
                if keys[0] > keys[1] or vels[0] > vels[1]:
                    continue
                gens = {k: v for k, v in igens.items() if k not in _RANGES}
                for oper, amount in pgens.items():  # preset generators add to the instrument's
                    if oper not in _RANGES and oper != _INSTRUMENT:
                        gens[oper] = gens.get(oper, _DEFAULTS.get(oper, 0)) + amount
                out.append(Zone(keys, vels, gens[_SAMPLE_ID], gens))
        presets[(bank, program)] = (name, tuple(out))
    return SoundFont(presets, samples, pcm)


def font_path() -> str:
    """The GM SoundFont inside the installed pretty_midi package."""
    path = importlib.resources.files(FONT_PACKAGE) / FONT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{FONT_FILE} not found in the installed {FONT_PACKAGE} package ({path})")
    return str(path)


@functools.lru_cache(maxsize=1)
def load_font() -> SoundFont:
    """The parsed GM font (once per process)."""
    with open(font_path(), "rb") as f:
        return parse(f.read())


@dataclasses.dataclass(frozen=True)
class _Resampled:
    data: np.ndarray  # float32 at the output rate, a guard sample appended
    loop_start: float  # in output samples
    loop_end: float
    rate_ratio: float  # sample rate / output rate (the resampling already applied)


@functools.lru_cache(maxsize=1024)
def _resampled(sample_index: int, gens_key: tuple, sample_rate: int) -> _Resampled:
    """The zone's sample (address offsets applied) band-limited to `sample_rate`, float32."""
    font = load_font()
    s = font.samples[sample_index]
    g = dict(gens_key)
    start = s.start + g.get(_START, 0) + 32768 * g.get(_START_COARSE, 0)
    end = s.end + g.get(_END, 0) + 32768 * g.get(_END_COARSE, 0)
    loop_start = s.loop_start + g.get(_START_LOOP, 0) + 32768 * g.get(_START_LOOP_COARSE, 0) - start
    loop_end = s.loop_end + g.get(_END_LOOP, 0) + 32768 * g.get(_END_LOOP_COARSE, 0) - start
    raw = font.pcm[start:end].astype(np.float32) / 32768.0
    up, down = sample_rate, s.sample_rate
    common = math.gcd(up, down)
    up, down = up // common, down // common
    data = resample_poly(raw, up, down).astype(np.float32) if (up, down) != (1, 1) else raw
    scale = up / down
    return _Resampled(np.append(data, np.float32(0)), loop_start * scale, loop_end * scale, s.sample_rate / sample_rate)


def _seconds(timecents: float) -> float:
    return 0.0 if timecents <= -32768 else 2.0 ** (timecents / 1200.0)


def _envelope(zone: Zone, key: int, n: int, held: int, sr: int) -> np.ndarray:
    """The SF2 volume envelope (linear gain) for `n` samples, released after `held`."""
    delay, attack = _seconds(zone.get(_DELAY)), _seconds(zone.get(_ATTACK))
    hold = _seconds(zone.get(_HOLD) + (60 - key) * zone.get(_KEY_TO_HOLD))
    decay = _seconds(zone.get(_DECAY) + (60 - key) * zone.get(_KEY_TO_DECAY))
    release = min(max(_seconds(zone.get(_RELEASE)), 0.005), _MAX_RELEASE_S)
    sustain_db = -min(max(zone.get(_SUSTAIN), 0), 1440) / 10.0  # centibels of attenuation
    t = np.arange(n, dtype=np.float32) / sr
    t_decay = t - (delay + attack + hold)
    # Decay: linear in dB, 100 dB per `decay` seconds, until the sustain level.
    db = np.maximum(-100.0 * np.maximum(t_decay, 0) / max(decay, 1e-4), sustain_db)
    env = 10.0 ** (db / 20.0)
    rising = t < delay + attack
    env[rising] = np.clip((t[rising] - delay) / max(attack, 1e-4), 0, 1)
    if held < n:
        level = float(env[held])
        tr = t[held:] - t[held]
        env[held:] = level * 10.0 ** (-100.0 * tr / release / 20.0)
    return env.astype(np.float32)


def _play_zone(zone: Zone, midi: float, n: int, held: int, sr: int) -> np.ndarray:
    gens_key = tuple(sorted((k, v) for k, v in zone.gens.items() if k in (0, 1, 2, 3, 4, 12, 45, 50)))
    res = _resampled(zone.sample, gens_key, sr)
    font = load_font()
    s = font.samples[zone.sample]
    root = zone.get(_ROOT_KEY)
    root = s.original_pitch if root < 0 or root > 127 else root
    if root > 127:
        root = 60
    cents = (midi - root) * zone.get(_SCALE_TUNING) + 100 * zone.get(_COARSE_TUNE) + zone.get(_FINE_TUNE)
    cents += s.pitch_correction
    step = 2.0 ** (cents / 1200.0)
    pos = np.arange(n, dtype=np.float64) * step
    mode = zone.get(_SAMPLE_MODES) & 3
    length = len(res.data) - 1
    lo, hi = res.loop_start, res.loop_end
    if mode in (1, 3) and 0 <= lo < hi <= length and hi - lo >= 2:
        span = hi - lo
        looped = pos[:held] if mode == 3 else pos
        over = looped > lo
        looped[over] = lo + (looped[over] - lo) % span
        if mode == 3 and held < n:  # after the release the sample plays on from where it was
            pos[held:] = looped[-1] + step * np.arange(1, n - held + 1) if held else pos[held:]
    valid = pos < length
    pos = np.where(valid, pos, 0.0)
    i = pos.astype(np.int64)
    frac = (pos - i).astype(np.float32)
    out = res.data[i] * (1 - frac) + res.data[i + 1] * frac
    out[~valid] = 0.0
    gain = 10.0 ** (-zone.get(_ATTENUATION) / 200.0)
    return out * (gain * _envelope(zone, int(round(midi)), n, held, sr))


def release_seconds(bank: int, program: int, key: int, velocity: int = 100) -> float:
    """How long a note of this preset rings after its release (to -60 dB; capped)."""
    zones = load_font().zones(bank, program, key, velocity)
    if not zones:
        return 0.0
    return 0.6 * min(max(_seconds(z.get(_RELEASE)) for z in zones), _MAX_RELEASE_S) + 0.005


def play_note(program: int, midi: float, n: int, held: int, sample_rate: int, *, velocity: int = 100, bank: int = 0):
    """`n` samples of GM `program` playing `midi` (float: fine pitch), released after `held`
    samples; float32 mono, unscaled (the sample's own level times the zone's attenuation)."""
    key, velocity = int(round(midi)), int(np.clip(velocity, 1, 127))
    zones = load_font().zones(bank, program, min(max(key, 0), 127), velocity)
    out = np.zeros(n, np.float32)
    for zone in zones:
        out += _play_zone(zone, midi, n, held, sample_rate)
    return out


@functools.lru_cache(maxsize=64)
def drum_hit(drum: str, sample_rate: int, velocity: int = 100) -> np.ndarray:
    """One hit of the GM standard kit's `drum` (a GM_DRUM_KEYS name), played to its end (at
    most 2 s; cymbals shorter: _DRUM_MAX_S), peak-normalised; cached per rate: the same buffer serves every hit."""
    key = GM_DRUM_KEYS[drum]
    zones = load_font().zones(DRUM_BANK, 0, key, velocity)
    if not zones:
        raise KeyError(f"the GM kit has no zone for {drum} (key {key})")
    n = int(_DRUM_MAX_S.get(drum, 2.0) * sample_rate)
    out = np.zeros(n, np.float32)
    for zone in zones:
        out += _play_zone(zone, key, n, n, sample_rate)
    fade = min(int(0.05 * sample_rate), n)  # cymbals are cut short (an open hat is choked)
    out[n - fade :] *= np.linspace(1, 0, fade, dtype=np.float32)
    nz = np.flatnonzero(np.abs(out) > 1e-4 * np.abs(out).max())
    out = out[: nz[-1] + 1] if len(nz) else out[:1]
    out = out / (np.abs(out).max() + 1e-9)
    out.flags.writeable = False
    return out
