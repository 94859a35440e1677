"""Attribute adherence: classic MIR detectors and a small learned attribute classifier.

The detectors are plain functions on (waveform, sample_rate) returning a label and the raw
measure behind it, so a report can show *why* a clip was labelled. They are tuned to the
ranges of the embedded synthetic source (data/synthetic.py) but use nothing it does not put
in the audio. The classifier (log-mel conv net, one softmax head per attribute) gives label
*distributions*, which the KLD metric compares between reference and generated audio.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Callable, Iterable, Sequence

import numpy as np

from musiclm_jax import fileio
from musiclm_jax.data import synthetic

# ---------------------------------------------------------------------------------------
# Classic detectors.

# Class boundaries sit in the gaps between the synthetic source's ranges
# (slow 60-76, medium 92-112, fast 132-160 BPM).
TEMPO_THRESHOLDS = (84.0, 122.0)
# Beats searched: from above half the slowest medium tempo (46-56 would be a halved medium)
# to a bit above the fastest class.
TEMPO_SEARCH_BPM = (58.0, 170.0)
_ONSET_HOP = 256

# The source transposes each melody so its median pitch is within a tritone of the register
# centre, so the boundaries are the midpoints between centres (52.5 and 71.5).
_REGISTER_OFFSET = 0.0
_PYIN_HOP = 512
_PYIN_FRAME = 2048
_PYIN_FMIN, _PYIN_FMAX = 36.0, 2100.0  # MIDI ~26 (lowest bass melody note) to ~96

# Krumhansl-Kessler probe-tone profiles, C major / C minor.
KK_MAJOR = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
KK_MINOR = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])

# Fraction of all STFT energy that is percussive (HPSS) *and* above 5 kHz, log10. Hats and
# snare noise put ~10% there; pitched notes rarely more than 1% (plucked attacks come closest).
DRUMS_LOG_THRESHOLD = -1.5
_DRUMS_CUTOFF_HZ = 5000.0

# Midpoints of the loudness targets (-26 / -18 / -12 dBFS).
LOUDNESS_THRESHOLDS = (-22.0, -15.0)
# The source levels the music alone and adds drums at DRUMS_LEVEL x its RMS (uncorrelated, so
# the powers add).
DRUMS_GAIN_DB = 10 * np.log10(1 + synthetic.DRUMS_LEVEL**2)


def _as_mono(waveform: np.ndarray) -> np.ndarray:
    x = np.asarray(waveform, dtype=np.float32)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"expected a non-empty mono waveform [samples], got shape {x.shape}")
    return x


def _onset_envelope(x: np.ndarray, sample_rate: int) -> np.ndarray:
    import librosa

    mel = librosa.feature.melspectrogram(y=x, sr=sample_rate, n_fft=1024, hop_length=_ONSET_HOP, n_mels=64)
    return librosa.onset.onset_strength(S=librosa.power_to_db(mel), sr=sample_rate, hop_length=_ONSET_HOP)


def _normalized_autocorrelation(env: np.ndarray) -> np.ndarray:
    env = env - env.mean()
    acf = np.correlate(env, env, "full")[len(env) - 1 :]
    acf = acf / (acf[0] + 1e-9)
    return acf * len(env) / (len(env) - np.arange(len(env)))  # unbiased: long lags see fewer frames


def _pulse_strength(acf: np.ndarray, bpm: float, fps: float) -> float:
    """Autocorrelation peak within +-3% of the lag of a pulse at `bpm`."""
    lag = 60.0 * fps / bpm
    lo, hi = int(np.floor(lag * 0.97)), int(np.ceil(lag * 1.03)) + 1
    return float(acf[lo : min(hi, len(acf))].max()) if lo < len(acf) - 1 else 0.0


def tempo_class_of(bpm: float) -> str:
    slow_max, medium_max = TEMPO_THRESHOLDS
    return "slow" if bpm < slow_max else ("medium" if bpm < medium_max else "fast")


def detect_tempo(waveform: np.ndarray, sample_rate: int) -> tuple[str, float]:
    """(tempo class, BPM). Picks the beat b maximising pulse(b) + pulse(2b) - pulse(4b).

    A plain beat tracker (librosa.beat) locks onto the hi-hats' eighth notes in slow pieces
    (reads 68 BPM as 136) and onto the kick/snare in fast ones, so its octave is unreliable.
    Asking that the eighth-note level (2b) pulse but the sixteenth level (4b) not is what
    tells a slow beat with eighth hats from a fast beat: in a 136 BPM piece the 272/min
    pulse is strong, in a 68 BPM piece it is absent.
    """
    x = _as_mono(waveform)
    fps = sample_rate / _ONSET_HOP
    acf = _normalized_autocorrelation(_onset_envelope(x, sample_rate))
    grid = np.exp(np.linspace(np.log(TEMPO_SEARCH_BPM[0]), np.log(TEMPO_SEARCH_BPM[1]), 240))
    score = [
        _pulse_strength(acf, b, fps) + _pulse_strength(acf, 2 * b, fps) - _pulse_strength(acf, 4 * b, fps) for b in grid
    ]
    score = np.asarray(score)
    # The +-3% windows make neighbouring grid points tie; the middle of the tied run is the estimate.
    bpm = float(np.median(grid[score >= score.max() - 1e-6]))
    return tempo_class_of(bpm), bpm


def _octave_corrected(
    f0: np.ndarray, spectrum: np.ndarray, sample_rate: int, n_fft: int, ratio: float = 0.7
) -> np.ndarray:
    """Moves each f0 up an octave while the spectrum at f0 is weak next to that at 2*f0.

    pyin (like most f0 trackers) drops to a subharmonic under block chords, on the organ's 16'
    drawbar and on the FM bell (partials at 1, 2.5, 4.5, ... x f0 share the fundamental f0/2).
    Taking the lowest *strong* partial instead fixes most of these.
    """
    freqs = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)

    def mag(column: np.ndarray, f: float) -> float:
        if f >= 0.475 * sample_rate:
            return 0.0
        lo = max(int(np.searchsorted(freqs, f * 0.97)) - 1, 0)
        hi = max(int(np.searchsorted(freqs, f * 1.03)) + 1, lo + 2)
        return float(column[lo:hi].max())

    out = f0.copy()
    for t in np.flatnonzero(np.isfinite(f0)):
        f = f0[t]
        for _ in range(3):
            if mag(spectrum[:, t], f) >= ratio * mag(spectrum[:, t], 2 * f):
                break
            f *= 2
        out[t] = f
    return out


def register_of(midi: float) -> str:
    centres = synthetic.REGISTERS
    low_max = (centres["low"] + centres["mid"]) / 2 - _REGISTER_OFFSET
    mid_max = (centres["mid"] + centres["high"]) / 2 - _REGISTER_OFFSET
    return "low" if midi < low_max else ("mid" if midi < mid_max else "high")


def detect_register(waveform: np.ndarray, sample_rate: int) -> tuple[str, float]:
    """(register, median MIDI pitch of the voiced frames); ("mid", nan) when nothing is voiced.

    pyin is the slow part (Viterbi over pitch x voicing states per frame), so it runs with a
    coarse 512-sample hop (32 ms at 16 kHz), a 0.2-semitone grid and fmin-fmax limited to the
    melody range; a register needs the median, not every note.
    """
    import librosa

    x = _as_mono(waveform)
    f0, voiced, _ = librosa.pyin(
        x,
        fmin=_PYIN_FMIN,
        fmax=min(_PYIN_FMAX, 0.45 * sample_rate),
        sr=sample_rate,
        frame_length=_PYIN_FRAME,
        hop_length=_PYIN_HOP,
        resolution=0.2,
    )
    f0 = np.where(voiced, f0, np.nan)
    if not np.isfinite(f0).any():
        return "mid", float("nan")
    spectrum = np.abs(librosa.stft(x, n_fft=_PYIN_FRAME, hop_length=_PYIN_HOP))
    f0 = _octave_corrected(f0, spectrum, sample_rate, _PYIN_FRAME)
    midi = float(np.median(librosa.hz_to_midi(f0[np.isfinite(f0)])))
    return register_of(midi), midi


def detect_key(waveform: np.ndarray, sample_rate: int) -> tuple[str, str, float]:
    """(tonic pitch class, mode, correlation): mean squared CQT chroma of the harmonic part
    (HPSS: drums smear chroma) against the 24 rotated Krumhansl-Kessler profiles. Squaring
    favours the pitch classes that dominate a frame (melody and chord tones over partials).
    Relative major/minor (same notes) is the usual confusion."""
    import librosa

    x = librosa.effects.harmonic(_as_mono(waveform), margin=2.0)
    chroma = (librosa.feature.chroma_cqt(y=x, sr=sample_rate, hop_length=512) ** 2).mean(axis=1)
    if not np.any(chroma > 0) or np.allclose(chroma, chroma[0]):
        return synthetic.PITCH_CLASSES[0], "major", 0.0
    scores = np.array(
        [np.corrcoef(chroma, np.roll(profile, k))[0, 1] for profile in (KK_MAJOR, KK_MINOR) for k in range(12)]
    )
    best = int(np.argmax(scores))
    return synthetic.PITCH_CLASSES[best % 12], ("major", "minor")[best // 12], float(scores[best])


def detect_mode(waveform: np.ndarray, sample_rate: int) -> tuple[str, float]:
    _, mode, score = detect_key(waveform, sample_rate)
    return mode, score


def drums_measure(waveform: np.ndarray, sample_rate: int) -> float:
    """log10 of the share of STFT energy that HPSS calls percussive and lies above 5 kHz.

    The plain percussive/harmonic ratio is fooled by plucked strings (the Karplus-Strong noise
    burst is all percussive), whose no-drum clips score higher than many drum clips; their
    burst is lowpassed within a few periods, while hats and snare keep noise above 5 kHz.
    """
    import librosa

    x = _as_mono(waveform)
    spectrum = np.abs(librosa.stft(x, n_fft=1024, hop_length=256))
    harmonic, percussive = librosa.decompose.hpss(spectrum)
    high = np.fft.rfftfreq(1024, 1.0 / sample_rate) > _DRUMS_CUTOFF_HZ
    total = float((harmonic**2).sum() + (percussive**2).sum())
    return float(np.log10((percussive[high] ** 2).sum() / (total + 1e-12) + 1e-12))


def detect_drums(
    waveform: np.ndarray, sample_rate: int, *, kick_weight: float = 2.0, kit_threshold: float = -5.5
) -> tuple[bool, float]:
    """(drums?, margin): drums when either
      high = log10 of the percussive share of STFT energy above 5 kHz (`drums_measure`: hats,
             cymbals, snare noise) exceeds DRUMS_LOG_THRESHOLD, or
      high + `kick_weight` x low, low = log10 of the percussive share below 150 Hz (the kick),
             exceeds `kit_threshold`;
    margin = the larger of the two excesses (positive: drums).

    The first rule alone reads the additive kit (bright noise hats) but misses the sampled GM
    kit (data/soundfont.py): its snare and cymbals have little above 5 kHz, its kick is strong.
    A kit has both ends, so the second rule asks for both; the low end alone would be fooled by
    plucked bass attacks. Measured in bench/bench_synthetic.py --detectors.
    """
    import librosa

    x = _as_mono(waveform)
    spectrum = np.abs(librosa.stft(x, n_fft=1024, hop_length=256))
    harmonic, percussive = librosa.decompose.hpss(spectrum)
    freqs = np.fft.rfftfreq(1024, 1.0 / sample_rate)
    total = float((harmonic**2).sum() + (percussive**2).sum()) + 1e-12
    high = float(np.log10((percussive[freqs > _DRUMS_CUTOFF_HZ] ** 2).sum() / total + 1e-12))
    low = float(np.log10((percussive[freqs < 150.0] ** 2).sum() / total + 1e-12))
    margin = max(high - DRUMS_LOG_THRESHOLD, high + kick_weight * low - kit_threshold)
    return bool(margin > 0), margin


def rms_dbfs(waveform: np.ndarray) -> float:
    x = _as_mono(waveform)
    return float(20 * np.log10(np.sqrt(np.mean(np.square(x, dtype=np.float64))) + 1e-12))


def loudness_of(dbfs: float) -> str:
    soft_max, medium_max = LOUDNESS_THRESHOLDS
    return "soft" if dbfs < soft_max else ("medium" if dbfs < medium_max else "loud")


def detect_loudness(waveform: np.ndarray, sample_rate: int, drums: bool | None = None) -> tuple[str, float]:
    """(loudness class, RMS dBFS of the clip). With drums (detected when not given), the drum
    share is taken off first: the classes are defined on the music before drums go on top."""
    dbfs = rms_dbfs(waveform)
    if drums is None:
        drums = detect_drums(waveform, sample_rate)[0]
    return loudness_of(dbfs - (DRUMS_GAIN_DB if drums else 0.0)), dbfs


def detect_all(waveform: np.ndarray, sample_rate: int) -> dict:
    """Every detector's label and raw measure, keyed like the synthetic source's labels."""
    tempo_class, bpm = detect_tempo(waveform, sample_rate)
    register, median_midi = detect_register(waveform, sample_rate)
    key, mode, key_score = detect_key(waveform, sample_rate)
    drums, drums_value = detect_drums(waveform, sample_rate)
    loudness, dbfs = detect_loudness(waveform, sample_rate, drums=drums)
    return {
        "tempo_class": tempo_class,
        "bpm": bpm,
        "register": register,
        "median_midi": median_midi,
        "key": key,
        "mode": mode,
        "key_score": key_score,
        "drums": drums,
        "drums_measure": drums_value,
        "loudness": loudness,
        "rms_dbfs": dbfs,
    }


# Detector per label, for accuracy reports: label -> fn(waveform, sr) -> predicted label.
DETECTORS: dict[str, Callable[[np.ndarray, int], object]] = {
    "tempo_class": lambda x, sr: detect_tempo(x, sr)[0],
    "register": lambda x, sr: detect_register(x, sr)[0],
    "mode": lambda x, sr: detect_mode(x, sr)[0],
    "key": lambda x, sr: detect_key(x, sr)[0],
    "drums": lambda x, sr: detect_drums(x, sr)[0],
    "loudness": lambda x, sr: detect_loudness(x, sr)[0],
}


def detector_accuracy(
    examples: Iterable[synthetic.SyntheticExample], attributes: Sequence[str] = tuple(DETECTORS)
) -> dict[str, float]:
    """Fraction of examples whose detected label equals the source label, per attribute."""
    hits = {a: [] for a in attributes}
    for ex in examples:
        for a in attributes:
            hits[a].append(DETECTORS[a](ex.audio, ex.sample_rate) == ex.labels[a])
    return {a: float(np.mean(h)) for a, h in hits.items()}


# ---------------------------------------------------------------------------------------
# Learned attribute classifier (for KLD between label distributions).

CLASSIFIER_ATTRIBUTES = ("instrument", "tempo_class", "mode", "register", "drums", "loudness", "texture")
CONFIG_FILE, _PARAMS_FILE = "config.json", "params.msgpack"  # config.json written last


@dataclasses.dataclass(frozen=True)
class ClassifierConfig:
    """Everything needed to rebuild the classifier and its features; saved as JSON."""

    sample_rate: int = 16000
    n_fft: int = 1024
    hop_length: int = 512
    n_mels: int = 64
    channels: tuple[int, ...] = (64, 64, 96)
    hidden: int = 128
    attributes: tuple[str, ...] = CLASSIFIER_ATTRIBUTES
    # Class names per attribute, as strings (drums' False/True become "False"/"True").
    classes: tuple[tuple[str, ...], ...] = tuple(
        tuple(str(v) for v in synthetic.LABEL_VALUES[a]) for a in CLASSIFIER_ATTRIBUTES
    )

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> "ClassifierConfig":
        raw = json.loads(text)
        raw["channels"] = tuple(raw["channels"])
        raw["attributes"] = tuple(raw["attributes"])
        raw["classes"] = tuple(tuple(c) for c in raw["classes"])
        return cls(**raw)


def log_mel_features(waveforms: np.ndarray, config: ClassifierConfig, sample_rate: int) -> np.ndarray:
    """[batch, frames, n_mels] log-mel in dB / 20, *not* normalised per clip: the absolute
    level is what the loudness head needs. Inputs at another rate are resampled first."""
    import librosa

    x = np.atleast_2d(np.asarray(waveforms, dtype=np.float32))
    if sample_rate != config.sample_rate:
        x = librosa.resample(x, orig_sr=sample_rate, target_sr=config.sample_rate, axis=-1)
    mel = librosa.feature.melspectrogram(
        y=x, sr=config.sample_rate, n_fft=config.n_fft, hop_length=config.hop_length, n_mels=config.n_mels
    )
    db = 10 * np.log10(mel + 1e-10)
    return (np.maximum(db, -100.0) / 20.0 + 2.0).transpose(0, 2, 1).astype(np.float32)


def _make_model(config: ClassifierConfig):
    import flax.linen as nn
    import jax.numpy as jnp

    class AttributeClassifier(nn.Module):
        """Strided 1-D convs over time (mel bins as channels), mean+max pooled, one head each."""

        @nn.compact
        def __call__(self, feats):  # [batch, frames, n_mels]
            h = feats
            for i, ch in enumerate(config.channels):
                h = nn.Conv(ch, kernel_size=(5,), strides=(1 if i == 0 else 2,), name=f"conv{i}")(h)
                h = nn.gelu(h)
            pooled = jnp.concatenate([h.mean(axis=1), h.max(axis=1), feats.mean(axis=1), feats.std(axis=1)], -1)
            z = nn.gelu(nn.Dense(config.hidden, name="trunk")(pooled))
            return {a: nn.Dense(len(c), name=f"head_{a}")(z) for a, c in zip(config.attributes, config.classes)}

    return AttributeClassifier()


def _label_indices(examples: Sequence[synthetic.SyntheticExample], config: ClassifierConfig) -> dict[str, np.ndarray]:
    return {
        a: np.array([c.index(str(ex.labels[a])) for ex in examples], np.int32)
        for a, c in zip(config.attributes, config.classes)
    }


def train_attribute_classifier(
    num_examples: int = 256,
    seed: int = 0,
    sample_rate: int = 16000,
    duration_s: float = 4.0,
    steps: int = 300,
    *,
    batch_size: int = 32,
    learning_rate: float = 2e-3,
    config: ClassifierConfig | None = None,
    progress: bool = False,
) -> tuple[dict, ClassifierConfig]:
    """Trains on `num_examples` synthetic training-split clips (seed offsets the split's
    stream, so training never sees validation clips). Returns (params, config)."""
    import jax
    import jax.numpy as jnp
    import optax

    if num_examples <= 0 or steps <= 0:
        raise ValueError(f"num_examples and steps must be positive, got {num_examples} and {steps}")
    config = config or ClassifierConfig(sample_rate=sample_rate)
    examples = [
        synthetic.render(synthetic.SPLIT_SEEDS["train"] + seed, i, sample_rate=sample_rate, duration_s=duration_s)
        for i in range(num_examples)
    ]
    feats = log_mel_features(np.stack([ex.audio for ex in examples]), config, sample_rate)
    labels = _label_indices(examples, config)
    model = _make_model(config)
    params = model.init(jax.random.PRNGKey(seed), jnp.zeros((1,) + feats.shape[1:]))["params"]
    optimizer = optax.adamw(optax.cosine_decay_schedule(learning_rate, steps, alpha=0.1), weight_decay=1e-4)
    opt_state = optimizer.init(params)

    def loss_fn(p, x, y):
        logits = model.apply({"params": p}, x)
        return sum(optax.softmax_cross_entropy_with_integer_labels(logits[a], y[a]).mean() for a in y)

    @jax.jit
    def step(p, s, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(p, x, y)
        updates, s = optimizer.update(grads, s, p)
        return optax.apply_updates(p, updates), s, loss

    rng = np.random.default_rng(seed)
    iterator = range(steps)
    if progress:
        from tqdm import tqdm

        iterator = tqdm(iterator, desc="train classifier")
    for _ in iterator:
        idx = rng.choice(num_examples, size=min(batch_size, num_examples), replace=False)
        params, opt_state, _ = step(params, opt_state, feats[idx], {a: v[idx] for a, v in labels.items()})
    return jax.device_get(params), config


def predict_label_distributions(
    params: dict, config: ClassifierConfig, waveforms: np.ndarray, sample_rate: int, batch_size: int = 64
) -> dict[str, np.ndarray]:
    """{attribute: probabilities [batch, classes]} for mono waveforms [batch, samples]."""
    import jax

    model = _make_model(config)
    apply = jax.jit(lambda p, x: {a: jax.nn.softmax(logits, -1) for a, logits in model.apply({"params": p}, x).items()})
    feats = log_mel_features(waveforms, config, sample_rate)
    chunks = [apply(params, feats[i : i + batch_size]) for i in range(0, len(feats), batch_size)]
    return {a: np.concatenate([np.asarray(c[a]) for c in chunks]) for a in config.attributes}


def save_classifier(directory: str, params: dict, config: ClassifierConfig) -> None:
    """config.json + params.msgpack (flax msgpack, no pickle)."""
    import flax.serialization

    fileio.makedirs(directory)
    # config.json last: it is what a reader checks for (the params are there once it exists).
    fileio.write_bytes(fileio.join(directory, _PARAMS_FILE), flax.serialization.msgpack_serialize(params))
    fileio.write_text(fileio.join(directory, CONFIG_FILE), config.to_json())


def load_classifier(directory: str) -> tuple[dict, ClassifierConfig]:
    import flax.serialization

    paths = [fileio.join(directory, name) for name in (CONFIG_FILE, _PARAMS_FILE)]
    missing = [p for p in paths if not fileio.exists(p)]
    if missing:
        raise FileNotFoundError(f"attribute classifier directory {directory!r} lacks {', '.join(missing)}")
    config = ClassifierConfig.from_json(fileio.read_text(paths[0]))
    params = flax.serialization.msgpack_restore(fileio.read_bytes(paths[1]))
    return params, config
