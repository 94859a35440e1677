"""Melody-embedding data (data/melody.py): determinism, renditions that follow their labels
(pitch tracked by pyin, chroma discriminating melodies), silent rests, transform, bad input."""

import librosa
import numpy as np
import pytest

from musiclm_jax.data import melody, synthetic

SR = 16000
HOP = 512


def _labelled(labels: dict, duration_s: float) -> melody.Melody:
    return melody.Melody(tuple(tuple(n) for n in labels["notes"]), duration_s)


def test_same_arguments_give_identical_audio_and_positions_differ():
    kinds = ("instrument", "instrument", "hum", "hum")
    a = melody.melody_group(5, 7, kinds=kinds, sample_rate=SR, duration_s=2.0)
    b = melody.melody_group(5, 7, kinds=kinds, sample_rate=SR, duration_s=2.0)
    for (xa, la), (xb, lb) in zip(a, b):
        np.testing.assert_array_equal(xa, xb)
        assert la == lb
    for x, labels in a:
        assert x.dtype == np.float32 and x.shape == (round(2.0 * SR),)
        assert np.all(np.isfinite(x)) and np.abs(x).max() <= 1.0 and np.sqrt(np.mean(x**2)) > 1e-3
        assert labels["melody_id"] == "5-7"
    # Same kind at two positions of a group: other draws, other audio.
    assert not np.array_equal(a[0][0], a[1][0]) and not np.array_equal(a[2][0], a[3][0])


def test_labels_are_the_transformed_melody():
    full = melody.melody_of(2, 4, 3.0 / 0.92)
    for x, labels in melody.melody_group(2, 4, kinds=melody.RENDITIONS, sample_rate=SR, duration_s=3.0):
        assert labels["rendition"] in melody.RENDITIONS
        assert 0.92 <= labels["tempo"] <= 1.08
        assert (labels["instrument"] is None) == (labels["rendition"] in ("hum", "whistle"))
        expected = melody.transform(full, octave_shift=labels["octave_shift"], tempo=labels["tempo"])
        expected = [list(n) for n in expected.notes if n[0] < 3.0]
        assert labels["notes"][:-1] == expected[:-1]  # the last note is cut at 3 s
        assert labels["notes"][-1][0] + labels["notes"][-1][1] <= 3.0 + 1e-9
        assert labels["notes"][-1][0] + labels["notes"][-1][1] > 2.9  # the melody fills the clip


def test_melody_is_the_scores_lead_line():
    for index in range(6):
        score = synthetic.sample_score(0, index, 4.0)
        m = melody.melody_of(0, index, 4.0)
        times = np.arange(0, 4.0, 0.01)
        np.testing.assert_array_equal(m.pitch_at(times), score.melody_pitch_at(times))
        assert len(m.pitch_curve(50.0)) == 200


def test_transform():
    m = melody.Melody(((0.0, 0.5, 60.0), (0.5, 0.5, 62.0), (1.5, 1.0, 64.0)), 3.0)
    up = melody.transform(m, octave_shift=1, tempo=1.0)
    assert [n[2] for n in up.notes] == [72.0, 74.0, 76.0]
    assert [n[:2] for n in up.notes] == [n[:2] for n in m.notes]
    fast = melody.transform(m, octave_shift=0, tempo=2.0)
    assert fast.notes == ((0.0, 0.25, 60.0), (0.25, 0.25, 62.0), (0.75, 0.5, 64.0))
    slow = melody.transform(m, octave_shift=-1, tempo=0.5)  # notes cut at the duration
    assert slow.notes == ((0.0, 1.0, 48.0), (1.0, 1.0, 50.0))
    assert slow.duration_s == 3.0


def _pyin_agreement(audio, labels, duration_s, fmin, fmax, frame_length):
    f0, voiced, _ = librosa.pyin(audio, fmin=fmin, fmax=fmax, sr=SR, frame_length=frame_length, hop_length=HOP)
    target = _labelled(labels, duration_s).pitch_curve(SR / HOP)
    k = min(len(f0), len(target))
    both = voiced[:k] & ~np.isnan(target[:k])
    assert both.sum() > 0.5 * k, "pyin finds the rendition voiced"
    err = np.abs(librosa.hz_to_midi(f0[:k][both]) - target[:k][both])
    return float(np.mean(err <= 0.5))


@pytest.mark.parametrize("kind,index", [("hum", 1), ("hum", 2), ("hum", 10), ("whistle", 0), ("whistle", 2)])
def test_hum_and_whistle_follow_their_labels(kind, index):
    # pyin's range per kind: the singing range, the whistling range.
    fmin, fmax, frame_length = (80.0, 700.0, 1024) if kind == "hum" else (400.0, 3500.0, 512)
    ((audio, labels),) = melody.melody_group(0, index, kinds=(kind,), sample_rate=SR, duration_s=3.0)
    lo, hi = melody.VOICE_RANGES[labels["voice"]] if kind == "hum" else melody.WHISTLE_RANGE
    midis = [n[2] for n in labels["notes"]]
    assert lo <= np.median(midis) <= hi
    assert _pyin_agreement(audio, labels, 3.0, fmin, fmax, frame_length) >= 0.8


def _chroma_match(chroma, labels, duration_s):
    """Mean (over voiced frames) chroma energy at the labelled pitch class, relative to the frame's."""
    target = _labelled(labels, duration_s).pitch_curve(SR / HOP)
    k = min(chroma.shape[1], len(target))
    frames = np.flatnonzero(~np.isnan(target[:k]))
    pcs = np.round(target[frames]).astype(int) % 12
    return float(np.mean(chroma[pcs, frames] / (chroma[:, frames].sum(axis=0) + 1e-9)))


@pytest.mark.parametrize("kind", ["instrument", "band"])
def test_chroma_matches_its_own_melody_not_another(kind):
    renditions = [melody.melody_group(0, index, kinds=(kind,), sample_rate=SR, duration_s=3.0)[0] for index in range(4)]
    for i, (audio, labels) in enumerate(renditions):
        chroma = librosa.feature.chroma_stft(y=audio, sr=SR, hop_length=HOP, n_fft=4096)
        own = _chroma_match(chroma, labels, 3.0)
        others = [_chroma_match(chroma, other, 3.0) for j, (_, other) in enumerate(renditions) if j != i]
        assert own > max(others) + 0.05, (labels["instrument"], own, others)


def test_rests_are_silent_in_hum_and_whistle():
    m = melody.Melody(((0.0, 0.6, 57.0), (0.6, 0.6, 60.0), (2.0, 1.0, 64.0)), 3.0)
    for kind in ("hum", "whistle"):
        audio, labels = melody.render_rendition(m, kind, seed=0, index=0, sample_rate=SR, duration_s=3.0)
        (_, d1, _), (s2, d2, _), (s3, _, _) = labels["notes"]
        rest_end = s2 + d2
        assert s3 - rest_end > 0.5  # the rest survives the tempo change
        rest = audio[int((rest_end + 0.15) * SR) : int((s3 - 0.02) * SR)]
        voiced = audio[: int(rest_end * SR)]
        assert np.sqrt(np.mean(rest**2)) < 1e-3 * np.sqrt(np.mean(voiced**2))


def test_pairs():
    pairs = list(melody.melody_pairs(1, 10, 3, sample_rate=SR, duration_s=1.0))
    assert len(pairs) == 3
    for i, (a, b, la, lb) in enumerate(pairs):
        assert a.shape == b.shape == (SR,)
        assert la["melody_id"] == lb["melody_id"] == f"1-{10 + i}"
        assert la["rendition"] in melody.RENDITIONS and lb["rendition"] in melody.RENDITIONS
        assert not np.array_equal(a, b)
    fixed = list(melody.melody_pairs(1, 0, 16, sample_rate=8000, duration_s=0.5, rng_kinds=False))
    combos = {(la["rendition"], lb["rendition"]) for _, _, la, lb in fixed}
    assert len(combos) == 16


def test_bad_input():
    m = melody.melody_of(0, 0, 2.0)
    with pytest.raises(ValueError, match="instrument, band, hum, whistle"):
        melody.render_rendition(m, "kazoo", seed=0, index=0, sample_rate=SR, duration_s=1.0)
    with pytest.raises(ValueError, match="unknown rendition kind"):
        melody.melody_group(0, 0, kinds=("hum", "kazoo"), sample_rate=SR, duration_s=1.0)
    for bad in (0.0, -1.0):
        with pytest.raises(ValueError, match="duration_s"):
            melody.render_rendition(m, "hum", seed=0, index=0, sample_rate=SR, duration_s=bad)
        with pytest.raises(ValueError, match="duration_s"):
            melody.melody_group(0, 0, kinds=("hum",), sample_rate=SR, duration_s=bad)
        with pytest.raises(ValueError, match="duration_s"):
            melody.melody_of(0, 0, bad)
        with pytest.raises(ValueError, match="duration_s"):
            next(melody.melody_pairs(0, 0, 1, sample_rate=SR, duration_s=bad))
