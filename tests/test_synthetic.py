"""The synthetic music source: determinism, musical structure, distinct timbres, captions."""

import dataclasses
import socket

import numpy as np
import pytest

from musiclm_jax.data import captions, soundfont, synthetic
from musiclm_jax.evaluation import attributes


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
            bar_s = synthetic.beats_per_bar(labels) * 60 / labels["bpm"]
            bar = [
                [
                    (round(n.start_s - b * bar_s, 6), n.midi)
                    for n in score.notes
                    if n.voice == "melody" and b * bar_s - 1e-9 <= n.start_s < (b + 1) * bar_s - 1e-9
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


@pytest.mark.parametrize("timbre_source", synthetic.TIMBRE_SOURCES)
def test_timbres_have_clearly_different_spectra(timbre_source):
    """The same melody rendered with each instrument: every pair of mean spectra differs."""
    score = synthetic.sample_score(0, 4, 4.0)
    melody = [n for n in score.notes if n.voice in ("melody", "arpeggio")]
    profiles = {}
    for inst in synthetic.INSTRUMENTS:
        labels = dict(score.labels, instrument=inst, register="mid", drums=False, timbre_source=timbre_source)
        notes = tuple(dataclasses.replace(n, instrument=inst) for n in melody)
        audio = synthetic.render_score(synthetic.Score(labels, score.duration_s, notes, ()), 16000)
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


def test_captions_agree_with_labels_and_vary():
    """The source's captions (the generator itself is tested in tests/test_captions.py)."""
    seen = set()
    for index in range(300):
        labels = synthetic.labels_of(7, index)
        caption = synthetic.caption_of(7, index)
        seen.add(caption)
        assert captions.contradictions(caption, labels) == [], (caption, labels)
    assert len(seen) == 300, "captions should almost never repeat"


def test_held_out_split_is_fixed_and_disjoint():
    source = synthetic.SyntheticSource(sample_rate=8000, duration_s=0.5, num_examples=3, num_validation_examples=2)
    train = [e.id for e in source.examples("train")]
    val = [e.id for e in source.examples("validation")]
    assert len(train) == 3 and len(val) == 2 and not set(train) & set(val)
    assert val == [e.id for e in source.examples("validation")]


# ---------------------------------------------------------------------------------------
# Sampled instruments (the GM SoundFont in pretty_midi) and the style labels.

PAIR_SEED, PAIR_N, PAIR_SR, PAIR_S = 3, 8, 16000, 3.0


def _with(score, **labels):
    return synthetic.Score(dict(score.labels, **labels), score.duration_s, score.notes, score.hits)


def test_the_font_loads_from_the_installed_package_without_network(monkeypatch):
    import pretty_midi

    def no_network(*args, **kwargs):
        raise AssertionError("the SoundFont must not need the network")

    monkeypatch.setattr(socket, "socket", no_network)
    path = soundfont.font_path()
    assert path.startswith(str(__import__("pathlib").Path(pretty_midi.__file__).parent))
    with open(path, "rb") as f:
        font = soundfont.parse(f.read())
    assert len(font.presets) >= 128
    for name, program in soundfont.GM_PROGRAMS.items():
        assert font.zones(0, program, 60, 100), name
    for drum, key in soundfont.GM_DRUM_KEYS.items():
        assert font.zones(soundfont.DRUM_BANK, 0, key, 100), drum
    assert set(soundfont.GM_PROGRAMS) == set(synthetic.INSTRUMENTS)


def test_sampled_notes_sound_at_their_pitch():
    """Root key, tuning and loops: every sampled instrument reads at the note it was asked for."""
    sr, midi = 16000, 45
    for inst, program in soundfont.GM_PROGRAMS.items():
        x = np.tile(soundfont.play_note(program, midi, int(0.4 * sr), int(0.35 * sr), sr), 2)
        _, median = attributes.detect_register(0.3 * x / np.abs(x).max(), sr)
        assert median == pytest.approx(midi, abs=0.6), inst


def test_sampled_rendering_is_deterministic_finite_and_not_silent():
    for sr, index in ((16000, 0), (24000, 1), (22050, 2)):
        score = synthetic.sample_score(PAIR_SEED, index, 3.0, sampled_fraction=1.0)
        assert score.labels["timbre_source"] == "sampled"
        a = synthetic.render_score(score, sr, seed=index)
        b = synthetic.render_score(score, sr, seed=index)
        np.testing.assert_array_equal(a, b)
        assert a.dtype == np.float32 and len(a) == round(3.0 * sr)
        assert np.all(np.isfinite(a)) and np.abs(a).max() <= 1.0
        frames = a[: int(0.1 * sr) * 29].reshape(29, -1)  # 100 ms frames, the end's fade-out left out
        assert np.sqrt((frames**2).mean(1)).min() > 1e-3, "a silent 100 ms stretch"
        additive = synthetic.render_score(_with(score, timbre_source="additive"), sr, seed=index)
        assert not np.allclose(a, additive, atol=1e-3)


def test_timbre_source_follows_sampled_fraction():
    n = 200
    for fraction, expect in ((0.0, "additive"), (1.0, "sampled")):
        assert {synthetic.labels_of(0, i, fraction)["timbre_source"] for i in range(n)} == {expect}
    sampled = {
        f: {i for i in range(n) if synthetic.labels_of(0, i, f)["timbre_source"] == "sampled"} for f in (0.2, 0.5)
    }
    assert sampled[0.2] < sampled[0.5] and 0.35 * n < len(sampled[0.5]) < 0.65 * n
    for i in range(20):
        for f in (0.0, 0.5, 1.0):
            assert synthetic.labels_of(5, i, f) == synthetic.sample_score(5, i, 1.0, sampled_fraction=f).labels
    with pytest.raises(ValueError, match="sampled_fraction"):
        synthetic.SyntheticSource(sampled_fraction=1.5)


def test_style_labels_agree_with_the_score():
    seen = {k: set() for k in ("style", "metre", "texture", "dynamics", "accompaniment")}
    for index in range(150):
        score = synthetic.sample_score(2, index, 8.0)
        lab = score.labels
        for key, values in synthetic.LABEL_VALUES.items():
            assert lab[key] in values, (key, lab)
        for k in seen:
            seen[k].add(lab[k])
        bpb = synthetic.beats_per_bar(lab)
        beat = 60 / lab["bpm"]
        bar = bpb * beat
        assert bpb == {"3/4": 3, "4/4": 4}[lab["metre"]]
        if lab["style"] == "waltz":
            assert lab["metre"] == "3/4" and lab["texture"] == "melody_chords"
        if lab["style"] in ("rock", "march"):
            assert lab["metre"] == "4/4" and lab["drums"]
        if lab["style"] == "ballad":
            assert lab["tempo_class"] in ("slow", "medium")
        assert lab["accompaniment"] != lab["instrument"]
        lead = [n for n in score.notes if n.voice in ("melody", "arpeggio")]
        backing = [n for n in score.notes if n.voice in ("chord", "bass")]
        assert lead and all(n.instrument == lab["instrument"] for n in lead)
        assert all(n.instrument == (lab["accompaniment"] or lab["instrument"]) for n in backing)
        if lab["texture"] == "melody":
            assert lab["accompaniment"] is None and not backing
        if lab["accompaniment"]:
            assert backing
        # Every full bar holds exactly one bar of lead: melody rhythms and arpeggios follow the metre.
        for b in range(int(8.0 // bar)):
            in_bar = [n for n in lead if b * bar - 1e-9 <= n.start_s < (b + 1) * bar - 1e-9]
            assert sum(n.duration_s for n in in_bar) == pytest.approx(bar), (b, lab)
            if lab["texture"] == "arpeggio":
                assert len(in_bar) == 2 * bpb
        if lab["style"] == "waltz":  # oom-pah-pah: the bar's lowest note on 1, chords on 2 and 3
            first = [n for n in backing if n.start_s < bar - 1e-9]
            onsets = sorted({round(n.start_s / beat, 6) for n in first})
            assert onsets == [0, 1, 2]
            assert max(n.midi for n in first if n.start_s < 1e-9) < min(n.midi for n in first if n.start_s > 1e-9)
        assert bool(score.hits) == lab["drums"]
        for h in score.hits:  # drums on the eighth-note grid of the metre
            assert (h.start_s / (beat / 2)) == pytest.approx(round(h.start_s / (beat / 2)), abs=1e-6)
        kicks = [round(h.start_s / beat, 6) % bpb for h in score.hits if h.drum == "kick"]
        if lab["style"] == "waltz" and lab["drums"]:
            assert set(np.round(kicks, 6)) == {0.0}
        if lab["style"] == "march":  # snare on every eighth, bass drum on 1 and 3
            assert len([h for h in score.hits if h.drum == "snare"]) == len(
                [t for t in np.arange(0, 8.0, beat / 2) if t < 8.0 - 1e-9]
            )
            assert set(np.round(kicks, 6)) == {0.0, 2.0}
        if lab["style"] == "rock":
            snares = {round(h.start_s / beat, 6) % bpb for h in score.hits if h.drum == "snare"}
            assert snares == {1.0, 3.0}
    assert seen["style"] == set(synthetic.STYLES) and seen["metre"] == set(synthetic.METRES)
    assert seen["dynamics"] == set(synthetic.DYNAMICS) and len(seen["accompaniment"]) >= 6


def test_dynamics_ramp_and_the_loudness_target_holds():
    score = synthetic.sample_score(0, 4, 4.0)
    base = synthetic.Score(dict(score.labels, drums=False, loudness="medium"), 4.0, score.notes, ())
    quarter = 4000

    def db(x):
        return 20 * np.log10(np.sqrt(np.mean(x**2)))

    for source in synthetic.TIMBRE_SOURCES:
        for dynamics, sign in (("crescendo", 1), ("diminuendo", -1), ("steady", 0)):
            x = synthetic.render_score(_with(base, dynamics=dynamics, timbre_source=source), 16000)
            assert db(x) == pytest.approx(synthetic.LOUDNESS_DBFS["medium"], abs=1.0)
            change = db(x[-quarter * 2 :]) - db(x[: quarter * 2])
            if sign:
                assert sign * change > 5, (source, dynamics, change)
            else:
                assert abs(change) < 5, (source, dynamics, change)


@pytest.fixture(scope="module")
def paired_clips():
    """The same PAIR_N scores rendered with each timbre source (3 s, 16 kHz)."""
    out = {}
    for i in range(PAIR_N):
        score = synthetic.sample_score(PAIR_SEED, i, PAIR_S)
        for source in synthetic.TIMBRE_SOURCES:
            out.setdefault(source, []).append(
                (score.labels, synthetic.render_score(_with(score, timbre_source=source), PAIR_SR, seed=i))
            )
    return out


def test_detectors_read_sampled_clips_as_well_as_additive_ones(paired_clips):
    """Register and drums read on the same scores in both timbre sources: the sampled renders
    carry the labels at least as well (one clip of slack), and well in absolute terms too."""
    correct = {}
    for source, clips in paired_clips.items():
        correct[source] = {
            "register": sum(attributes.detect_register(x, PAIR_SR)[0] == lab["register"] for lab, x in clips),
            "drums": sum(attributes.detect_drums(x, PAIR_SR)[0] == lab["drums"] for lab, x in clips),
        }
    print("detector hits out of", PAIR_N, correct)
    drums = [lab["drums"] for lab, _ in paired_clips["sampled"]]
    assert 0 < sum(drums) < PAIR_N, "the set must hold clips with and without drums"
    for attr in ("register", "drums"):
        assert correct["sampled"][attr] >= correct["additive"][attr] - 1, attr
        assert correct["sampled"][attr] >= 0.8 * PAIR_N, attr
