"""The synthetic music source: determinism, musical structure, distinct timbres, captions."""

import re

import numpy as np
import pytest

from musiclm_jax.data import captions, synthetic


def test_same_seed_and_index_give_identical_audio_and_caption():
    a = synthetic.render(3, 11, sample_rate=16000, duration_s=2.0)
    b = synthetic.render(3, 11, sample_rate=16000, duration_s=2.0)
    c = synthetic.render(3, 12, sample_rate=16000, duration_s=2.0)
    np.testing.assert_array_equal(a.audio, b.audio)
    assert a.caption == b.caption and a.labels == b.labels
    assert not np.array_equal(a.audio, c.audio)


@pytest.mark.parametrize("sample_rate,duration_s", [(16000, 2.5), (24000, 1.0), (22050, 3.3)])
def test_any_rate_and_duration(sample_rate, duration_s):
    ex = synthetic.render(0, 5, sample_rate=sample_rate, duration_s=duration_s)
    assert ex.audio.dtype == np.float32
    assert len(ex.audio) == round(sample_rate * duration_s)
    assert np.all(np.isfinite(ex.audio)) and np.abs(ex.audio).max() <= 1.0
    assert np.sqrt(np.mean(ex.audio**2)) > 1e-3  # not silent


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="duration_s"):
        synthetic.render(0, 0, duration_s=0)
    with pytest.raises(ValueError, match="sample_rate"):
        synthetic.render(0, 0, sample_rate=1000)
    with pytest.raises(ValueError, match="unknown split"):
        next(synthetic.SyntheticSource().examples("dev"))


def test_notes_are_in_key_and_phrases_repeat():
    for index in range(30):
        score = synthetic.sample_score(0, index, 12.0)
        labels = score.labels
        tonic = synthetic.PITCH_CLASSES.index(labels["key"])
        scale = {(tonic + s) % 12 for s in synthetic._SCALES[labels["mode"]]}
        if labels["mode"] == "minor":
            scale.add((tonic + 11) % 12)  # the raised 7th of the dominant chord
        assert all(int(n.midi) % 12 in scale for n in score.notes), labels
        if labels["texture"] != "arpeggio":
            beat = 60 / labels["bpm"]
            bar = [
                [
                    (round(n.start_s - b * 4 * beat, 6), n.midi)
                    for n in score.notes
                    if n.voice == "melody" and b * 4 * beat <= n.start_s < (b + 1) * 4 * beat
                ]
                for b in range(2)
            ]
            assert bar[0] == bar[1], "the first motif is repeated in the second bar"


def test_register_label_matches_the_melody():
    centres = []
    for index in range(40):
        score = synthetic.sample_score(1, index, 6.0)
        melody = [n.midi for n in score.notes if n.voice in ("melody", "arpeggio")]
        centres.append((score.labels["register"], np.median(melody)))
    for reg, med in centres:
        assert abs(med - synthetic.REGISTERS[reg]) <= 6, (reg, med)


def _mean_log_spectrum(audio, n_fft=2048):
    frames = np.lib.stride_tricks.sliding_window_view(audio, n_fft)[::512] * np.hanning(n_fft)
    spec = np.abs(np.fft.rfft(frames, axis=-1)) ** 2
    prof = np.log(spec.mean(0) + 1e-10)
    bands = np.array_split(prof, 64)  # coarse shape, insensitive to exact partials
    return np.array([b.mean() for b in bands])


def test_timbres_have_clearly_different_spectra():
    """The same score rendered with each instrument: every pair of mean spectra differs."""
    score = synthetic.sample_score(0, 4, 4.0)
    profiles = {}
    for inst in synthetic.INSTRUMENTS:
        labels = dict(score.labels, instrument=inst, register="mid", drums=False)
        audio = synthetic.render_score(synthetic.Score(labels, score.duration_s, score.notes, ()), 16000)
        p = _mean_log_spectrum(audio)
        profiles[inst] = p - p.max()
    names = list(profiles)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            dist = np.sqrt(np.mean((profiles[a] - profiles[b]) ** 2))
            assert dist > 1.0, f"{a} and {b} sound alike (log-spectrum distance {dist:.2f})"


def test_drums_add_percussive_energy():
    score = synthetic.sample_score(0, 1, 4.0)
    labels = dict(score.labels, drums=False)
    plain = synthetic.render_score(synthetic.Score(labels, 4.0, score.notes, ()), 16000)
    hits = tuple(synthetic.Hit(t * 0.5, "kick" if t % 2 == 0 else "snare", 1.0) for t in range(8))
    drummed = synthetic.render_score(synthetic.Score(dict(labels, drums=True), 4.0, score.notes, hits), 16000)

    # Spectral flux (onset strength) is much higher with the kit.
    def flux(x):
        frames = np.lib.stride_tricks.sliding_window_view(x, 1024)[::256]
        mag = np.abs(np.fft.rfft(frames * np.hanning(1024), axis=-1))
        return np.maximum(np.diff(np.log1p(mag * 10), axis=0), 0).sum(1).mean()

    assert flux(drummed) > 1.5 * flux(plain)


def _word_in(caption: str, phrase: str) -> bool:
    return re.search(r"(?<![\w-])" + re.escape(phrase.lower()) + r"(?![\w-])", caption.lower()) is not None


def test_captions_agree_with_labels_and_vary():
    seen = set()
    for index in range(300):
        labels = synthetic.sample_score(7, index, 1.0).labels
        caption = captions.caption_for(labels, synthetic._rng(7, index, stream=1))
        seen.add(caption)
        own = captions._INSTRUMENT_WORDS[labels["instrument"]]
        assert any(_word_in(caption, w) for w in own), (caption, labels)
        for other, words in captions._INSTRUMENT_WORDS.items():
            if other != labels["instrument"]:
                assert not any(_word_in(caption, w) for w in words), (caption, labels)
        assert any(_word_in(caption, w) for w in captions._DRUM_WORDS[labels["drums"]]) or _word_in(
            caption, "drums" if labels["drums"] else "no drums"
        ), (caption, labels)
        for cls, words in captions._TEMPO_WORDS.items():
            if cls != labels["tempo_class"]:
                assert not any(_word_in(caption, w) for w in words), (caption, labels)
        other_mode = "minor" if labels["mode"] == "major" else "major"
        assert not _word_in(caption, other_mode), (caption, labels)
        for number in re.findall(r"(\d+) (?:BPM|bpm|beats)", caption):
            assert int(number) == labels["bpm"]
        key = re.search(r"\b([A-G]#?) (major|minor)\b", caption)
        if key:
            assert key.groups() == (labels["key"], labels["mode"]), (caption, labels)
    assert len(captions._TEMPLATES) >= 20
    assert len(seen) == 300, "captions should almost never repeat"


def test_every_template_names_instrument_and_drums():
    for t in captions._TEMPLATES:
        assert "{instrument}" in t and re.search(r"\{drums(_short|_cap)?\}", t), t


def test_held_out_split_is_fixed_and_disjoint():
    source = synthetic.SyntheticSource(sample_rate=8000, duration_s=0.5, num_examples=3, num_validation_examples=2)
    train = [e.id for e in source.examples("train")]
    val = [e.id for e in source.examples("validation")]
    assert len(train) == 3 and len(val) == 2 and not set(train) & set(val)
    assert val == [e.id for e in source.examples("validation")]
