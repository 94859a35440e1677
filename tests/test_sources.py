"""Real audio sources, audio I/O and bad-input accounting, on files made in tmp_path."""

import json
import logging
import os

import numpy as np
import pytest
import soundfile as sf

from musiclm_jax.audio import io as audio_io
from musiclm_jax.data import bad_input
from musiclm_jax.data.bad_input import BadInputReport, NoUsableExamplesError
from musiclm_jax.data.sources import FolderSource, ManifestSource, MusicCapsSource, hash_split

SR = 16000


def tone(freq, seconds, sr=SR, amp=0.5, channels=1):
    t = np.arange(int(round(seconds * sr))) / sr
    x = (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return np.stack([x] * channels, axis=1) if channels > 1 else x


def write(path, data, sr=SR, **kw):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    sf.write(str(path), data, sr, **kw)
    return str(path)


def dominant_freq(x, sr):
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return np.fft.rfftfreq(len(x), 1 / sr)[np.argmax(spectrum)]


def write_manifest(path, records):
    with open(path, "w") as f:
        for r in records:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return str(path)


def collect(source, split="train"):
    return {e.id: e for e in source.examples(split)}


# ---------------------------------------------------------------- audio I/O


def test_load_resample_preserves_length_and_frequency(tmp_path):
    path = write(tmp_path / "a.wav", tone(1000, 2.0, sr=44100), sr=44100)
    audio, info = audio_io.load_audio(path, sample_rate=16000)
    assert audio.dtype == np.float32 and audio.shape == (32000,)
    assert info.resampled and info.orig_sample_rate == 44100 and not info.downmixed
    assert abs(dominant_freq(audio, 16000) - 1000) < 2


def test_stereo_downmix_is_channel_mean(tmp_path):
    left, right = tone(440, 1.0, amp=0.6), tone(440, 1.0, amp=0.2)
    path = write(tmp_path / "s.flac", np.stack([left, right], axis=1), subtype="PCM_24")
    audio, info = audio_io.load_audio(path, sample_rate=SR)
    assert info.downmixed and info.orig_channels == 2 and not info.resampled
    np.testing.assert_allclose(audio, (left + right) / 2, atol=1e-4)


def test_crop_reads_only_the_window(tmp_path):
    x = np.concatenate([tone(300, 2.0), tone(2000, 3.0), tone(300, 2.0)])
    path = write(tmp_path / "c.wav", x, subtype="FLOAT")
    audio, info = audio_io.load_audio(path, sample_rate=SR, start_s=2.0, end_s=5.0)
    np.testing.assert_array_equal(audio, x[2 * SR : 5 * SR])
    assert info.file_duration_s == pytest.approx(7.0)


def test_normalize_hits_target_rms_and_stays_in_range(tmp_path):
    path = write(tmp_path / "q.wav", tone(440, 1.0, amp=0.01), subtype="FLOAT")
    audio, info = audio_io.load_audio(path, sample_rate=SR, normalize_db=-20.0)
    assert audio_io.rms_db(audio) == pytest.approx(-20.0, abs=0.01)
    assert not info.peak_limited
    assert info.gain_db == pytest.approx(-20 - audio_io.rms_db(tone(440, 1, amp=0.01)), abs=0.01)
    # A click train cannot reach -3 dBFS RMS without clipping: limited to peak 1.
    clicks = np.zeros(SR, np.float32)
    clicks[::400] = 0.5
    path = write(tmp_path / "k.wav", clicks, subtype="FLOAT")
    audio, info = audio_io.load_audio(path, sample_rate=SR, normalize_db=-3.0)
    assert info.peak_limited and np.max(np.abs(audio)) == pytest.approx(1.0, abs=1e-6)
    assert audio_io.rms_db(audio) < -3.0


def test_write_wav_clips_and_round_trips(tmp_path):
    x = np.array([0.0, 0.5, -0.25, 1.5, -2.0], np.float32)
    audio_io.write_wav(tmp_path / "w.wav", x, SR, subtype="FLOAT")
    y, sr = sf.read(str(tmp_path / "w.wav"), dtype="float32")
    assert sr == SR
    np.testing.assert_array_equal(y, [0.0, 0.5, -0.25, 1.0, -1.0])
    audio_io.write_wav(tmp_path / "p.wav", x, SR)
    assert sf.info(str(tmp_path / "p.wav")).subtype == "PCM_16"
    with pytest.raises(ValueError, match="NaN"):
        audio_io.write_wav(tmp_path / "n.wav", np.array([np.nan], np.float32), SR)


def test_mp3_decodes(tmp_path):
    if "MP3" not in sf.available_formats():
        pytest.skip("libsndfile here cannot write mp3 (needs libsndfile >= 1.1 with lame/mpg123)")
    path = write(tmp_path / "m.mp3", tone(880, 2.0, sr=44100), sr=44100, format="MP3")
    audio, info = audio_io.load_audio(path, sample_rate=SR, start_s=0.5, end_s=1.5)
    assert audio.shape == (SR,) and info.orig_sample_rate == 44100
    assert abs(dominant_freq(audio, SR) - 880) < 5


@pytest.mark.parametrize(
    "make, category",
    [
        ("corrupt", bad_input.CORRUPT),
        ("truncated", bad_input.TRUNCATED),
        ("empty", bad_input.EMPTY_FILE),
        ("silent", bad_input.SILENT),
        ("nan", bad_input.NON_FINITE),
        ("ext", bad_input.UNKNOWN_EXTENSION),
        ("missing", bad_input.MISSING_FILE),
        ("crop_past_end", bad_input.TRUNCATED),
        # libsndfile reports a cut FLAC stream like a damaged one ("lost sync"): counted corrupt.
        ("truncated_flac", bad_input.CORRUPT),
    ],
)
def test_load_audio_error_categories(tmp_path, make, category):
    path = make_bad_file(tmp_path, make)
    with pytest.raises(audio_io.AudioDecodeError) as e:
        audio_io.load_audio(path, sample_rate=SR, end_s=5.0 if make == "crop_past_end" else None)
    assert e.value.category == category and e.value.path == path and path in str(e.value)


def make_bad_file(folder, kind):
    """One file per bad-input category that a decoder sees."""
    folder = str(folder)
    if kind == "corrupt":
        path = os.path.join(folder, "corrupt.wav")
        with open(path, "wb") as f:
            f.write(np.random.default_rng(0).bytes(4000))
        return path
    if kind == "truncated":  # a valid wav cut in half: libsndfile would read half and say nothing
        path = write(os.path.join(folder, "truncated.wav"), tone(440, 1.0), subtype="PCM_16")
        data = open(path, "rb").read()
        with open(path, "wb") as f:
            f.write(data[: len(data) // 2])
        return path
    if kind == "truncated_flac":
        path = write(os.path.join(folder, "truncated.flac"), tone(440, 4.0))
        data = open(path, "rb").read()
        with open(path, "wb") as f:
            f.write(data[: len(data) // 2])
        return path
    if kind == "empty":
        path = os.path.join(folder, "empty.wav")
        open(path, "wb").close()
        return path
    if kind == "silent":
        return write(os.path.join(folder, "silent.wav"), np.zeros(SR, np.float32), subtype="FLOAT")
    if kind == "nan":
        x = tone(440, 1.0)
        x[100], x[200] = np.nan, np.inf
        return write(os.path.join(folder, "nan.wav"), x, subtype="FLOAT")
    if kind == "ext":
        path = os.path.join(folder, "notes.xyz")
        with open(path, "wb") as f:
            f.write(b"not audio")
        return path
    if kind == "missing":
        return os.path.join(folder, "missing.wav")
    if kind == "crop_past_end":
        return write(os.path.join(folder, "short.wav"), tone(440, 1.0))
    raise ValueError(kind)


# ---------------------------------------------------------------- bad-input report


def test_report_counts_logs_caps_and_summarises(caplog):
    report = BadInputReport("src", log_limit=2)
    with caplog.at_level(logging.INFO, logger="musiclm_jax.data.bad_input"):
        for i in range(5):
            report.add(bad_input.CORRUPT, f"/x/c{i}.wav", "bad")
        report.add(bad_input.RESAMPLED, "/x/r.wav")
    assert report.as_dict() == {"corrupt": 5, "resampled": 1}
    assert report.skipped() == {"corrupt": 5} and report.repaired() == {"resampled": 1}
    messages = [r.getMessage() for r in caplog.records]
    assert sum("/x/c" in m for m in messages) == 2 and sum("more" in m for m in messages) == 1
    assert any("/x/r.wav" in m for m in messages)
    summary = report.summary()
    assert "corrupt" in summary and "5" in summary and "resampled" in summary and "/x/c0.wav" in summary
    with pytest.raises(ValueError, match="unknown bad-input category"):
        report.add("oops", "/x")


def test_check_usable_names_source_and_categories():
    report = BadInputReport()
    report.add(bad_input.MISSING_FILE, "/a")
    report.add(bad_input.MISSING_FILE, "/b")
    report.add(bad_input.CORRUPT, "/c")
    report.add(bad_input.RESAMPLED, "/d")
    report.check_usable("s", 1)
    with pytest.raises(NoUsableExamplesError) as e:
        report.check_usable("manifest:/data/x.jsonl", 0, "train")
    msg = str(e.value)
    assert "'manifest:/data/x.jsonl' split 'train'" in msg and "missing_file=2" in msg and "corrupt=1" in msg
    assert "resampled" not in msg


# ---------------------------------------------------------------- sources


def test_manifest_source_paths_captions_labels_and_splits(tmp_path):
    write(tmp_path / "audio" / "a.wav", tone(440, 1.0))
    write(tmp_path / "audio" / "b.flac", tone(660, 1.5))
    abs_path = write(tmp_path / "elsewhere" / "c.wav", tone(880, 1.0))
    manifest = write_manifest(
        tmp_path / "m.jsonl",
        [
            {"path": "audio/a.wav", "caption": "a calm tone", "genre": "ambient", "bpm": 60},
            {"path": "audio/b.flac", "caption": "higher", "id": "clip-b"},
            {"path": abs_path, "caption": "absolute", "split": "valid"},
        ],
    )
    source = ManifestSource(manifest, sample_rate=SR, validation_fraction=0.0)
    train = collect(source)
    assert set(train) == {"audio/a.wav", "clip-b"}
    a = train["audio/a.wav"]
    assert a.caption == "a calm tone" and a.labels == {"genre": "ambient", "bpm": 60} and a.sample_rate == SR
    assert a.audio.dtype == np.float32 and a.audio.shape == (SR,)
    assert abs(dominant_freq(train["clip-b"].audio, SR) - 660) < 2
    assert not source.report
    assert [e.caption for e in source.examples("validation")] == ["absolute"]
    with pytest.raises(ValueError, match="unknown split"):
        next(source.examples("test"))


def test_hash_split_is_deterministic_and_proportional():
    ids = [f"clip-{i}" for i in range(4000)]
    first = [hash_split(i, 0.05) for i in ids]
    assert first == [hash_split(i, 0.05) for i in ids]
    assert 0.04 < first.count("validation") / len(ids) < 0.06
    # Growing the fraction only moves ids into validation, never out.
    bigger = [hash_split(i, 0.2) for i in ids]
    assert all(b == "validation" for f, b in zip(first, bigger) if f == "validation")


def test_manifest_source_hash_split_partitions(tmp_path):
    for i in range(12):
        write(tmp_path / f"{i}.wav", tone(200 + 50 * i, 0.2))
    manifest = write_manifest(tmp_path / "m.jsonl", [{"path": f"{i}.wav", "caption": str(i)} for i in range(12)])
    source = ManifestSource(manifest, sample_rate=SR, validation_fraction=0.3)
    train, val = collect(source, "train"), collect(source, "validation")
    assert set(train) | set(val) == {f"{i}.wav" for i in range(12)} and not set(train) & set(val)
    assert set(val) == {i for i in set(train) | set(val) if hash_split(i, 0.3) == "validation"}
    assert set(collect(ManifestSource(manifest, sample_rate=SR, validation_fraction=0.3), "validation")) == set(val)


def _musiccaps_csv(path, rows):
    header = (
        "ytid,start_s,end_s,audioset_positive_labels,aspect_list,caption,author_id,"
        "is_balanced_subset,is_audioset_eval\n"
    )
    with open(path, "w") as f:
        f.write(header + "".join(rows))
    return str(path)


def test_musiccaps_crops_parses_aspects_and_maps_eval_split(tmp_path):
    audio_dir = tmp_path / "audio"
    x = np.concatenate([tone(300, 2.0), tone(2000, 3.0), tone(300, 7.0)])  # 12 s, 2 kHz in [2, 5] s
    write(audio_dir / "abc123.wav", x, subtype="FLOAT")
    write(audio_dir / "[def456] some title.flac", tone(500, 10.0))
    write(audio_dir / "evl789.ogg", tone(700, 10.0))
    csv_path = _musiccaps_csv(
        tmp_path / "mc.csv",
        [
            "abc123,2,5,\"/m/0140xf,/m/02cjck\",\"['pop', 'mellow']\",A bright tone.,4,True,False\n",
            "def456,30,40,/m/04rlf,\"['rock']\",Guitar.,1,False,False\n",
            "evl789,0,10,,\"['jazz']\",Eval clip.,2,True,True\n",
        ],
    )
    source = MusicCapsSource(csv_path, audio_dir, sample_rate=SR, already_cropped=False)
    train = collect(source)
    clip = train["abc123"]
    assert clip.audio.shape == (3 * SR,)
    np.testing.assert_array_equal(clip.audio, x[2 * SR : 5 * SR])
    assert abs(dominant_freq(clip.audio, SR) - 2000) < 2
    assert clip.caption == "A bright tone."
    assert clip.labels == {
        "aspect_list": ["pop", "mellow"],
        "audioset_positive_labels": ["/m/0140xf", "/m/02cjck"],
        "author_id": "4",
    }
    # def456's file is a 10 s clip but 30-40 s is asked: truncated, with a hint.
    assert "def456" not in train and source.report.as_dict() == {"truncated": 1}
    val = collect(source, "validation")
    assert list(val) == ["evl789"] and val["evl789"].labels["aspect_list"] == ["jazz"]
    cropped = collect(MusicCapsSource(csv_path, audio_dir, sample_rate=SR, already_cropped=True))
    assert cropped["def456"].audio.shape == (10 * SR,) and cropped["abc123"].audio.shape == (12 * SR,)


def test_folder_source_sidecars_and_missing_captions(tmp_path, caplog):
    write(tmp_path / "a.wav", tone(440, 0.5))
    (tmp_path / "a.txt").write_text("  a plain caption\n")
    write(tmp_path / "sub" / "b.flac", tone(550, 0.5))
    (tmp_path / "sub" / "b.json").write_text(json.dumps({"caption": "json caption", "mood": "happy"}))
    write(tmp_path / "sub" / "c.ogg", tone(660, 0.5))
    write(tmp_path / ".hidden" / "d.wav", tone(440, 0.5))
    write(tmp_path / ".e.wav", tone(440, 0.5))
    (tmp_path / "readme.md").write_text("not audio")
    with caplog.at_level(logging.INFO):
        source = FolderSource(tmp_path, sample_rate=SR, validation_fraction=0.0)
        ex = collect(source)
    assert list(ex) == ["a.wav", os.path.join("sub", "b.flac"), os.path.join("sub", "c.ogg")]
    assert ex["a.wav"].caption == "a plain caption"
    b = ex[os.path.join("sub", "b.flac")]
    assert b.caption == "json caption" and b.labels == {"mood": "happy"}
    assert ex[os.path.join("sub", "c.ogg")].caption == ""
    assert source.report.as_dict() == {"unknown_extension": 1, "missing_caption": 1}
    assert source.report.repaired() == {"missing_caption": 1}
    logged = caplog.text
    assert str(tmp_path / "readme.md") in logged and str(tmp_path / "sub" / "c.ogg") in logged
    strict = FolderSource(tmp_path, sample_rate=SR, validation_fraction=0.0, require_caption=True)
    assert len(collect(strict)) == 2 and strict.report.skipped() == {"unknown_extension": 1, "missing_caption": 1}


def test_every_bad_input_category_is_counted_and_logged(tmp_path, caplog):
    """One manifest with one input per category; each lands in its category, with its path."""
    folder = tmp_path / "clips"
    os.makedirs(folder)
    expected = {}  # category -> path that must be logged
    records = []
    for kind, category in [
        ("corrupt", "corrupt"),
        ("truncated", "truncated"),
        ("empty", "empty_file"),
        ("silent", "silent"),
        ("nan", "non_finite"),
        ("ext", "unknown_extension"),
        ("missing", "missing_file"),
    ]:
        path = make_bad_file(folder, kind)
        records.append({"path": os.path.relpath(path, tmp_path), "caption": kind})
        expected[category] = path
    expected["resampled"] = write(folder / "hi_rate.wav", tone(440, 1.0, sr=22050), sr=22050)
    expected["downmixed"] = write(folder / "stereo.wav", tone(440, 1.0, channels=2))
    expected["missing_caption"] = write(folder / "nocap.wav", tone(440, 1.0))
    expected["too_short"] = write(folder / "short.wav", tone(440, 0.25))
    records += [
        {"path": "clips/hi_rate.wav", "caption": "rate"},
        {"path": "clips/stereo.wav", "caption": "stereo"},
        {"path": "clips/nocap.wav"},
        {"path": "clips/short.wav", "caption": "short"},
        '{"path": "clips/oops.wav", "caption": ',  # malformed JSON, line 12
        '["not", "an", "object"]',  # line 13
    ]
    manifest = write_manifest(tmp_path / "m.jsonl", records)
    expected["bad_manifest_line"] = f"{manifest}:12"
    source = ManifestSource(manifest, sample_rate=SR, min_seconds=0.5, validation_fraction=0.0)
    with caplog.at_level(logging.INFO):
        ex = collect(source)
    assert sorted(e.caption for e in ex.values()) == ["", "rate", "stereo"]
    assert ex["clips/hi_rate.wav"].audio.shape == (SR,)
    assert ex["clips/stereo.wav"].audio.ndim == 1
    counts = source.report.as_dict()
    assert counts == {c: 1 for c in expected if c != "bad_manifest_line"} | {"bad_manifest_line": 2}
    assert set(counts) == set(bad_input.CATEGORIES)
    for category, path in expected.items():
        assert any(category in r.getMessage() and path in r.getMessage() for r in caplog.records), category
    summary = source.report.summary()
    assert summary.splitlines()[0].endswith("10 skipped, 3 repaired")
    for category in expected:
        assert category in summary
    assert any(r.name == "musiclm_jax.data.sources" and r.getMessage() == summary for r in caplog.records)


def test_source_with_no_usable_example_raises(tmp_path):
    write(tmp_path / "bad" / "x.wav", np.zeros(SR, np.float32))
    with open(tmp_path / "bad" / "y.flac", "wb") as f:
        f.write(b"garbage")
    manifest = write_manifest(
        tmp_path / "m.jsonl",
        [
            {"path": "bad/x.wav", "caption": "s"},
            {"path": "bad/y.flac", "caption": "c"},
            {"path": "bad/gone.wav", "caption": "m"},
            {"path": "bad/gone2.wav", "caption": "m"},
        ],
    )
    source = ManifestSource(manifest, sample_rate=SR, validation_fraction=0.0)
    with pytest.raises(NoUsableExamplesError) as e:
        list(source.examples("train"))
    msg = str(e.value)
    assert f"manifest:{manifest}" in msg and "'train'" in msg
    assert "missing_file=2" in msg and "corrupt=1" in msg and "silent=1" in msg
    # An empty split is an error too, not an empty dataset.
    with pytest.raises(NoUsableExamplesError, match="no input entries found .no entry falls in this split"):
        list(FolderSource(tmp_path / "bad", sample_rate=SR, validation_fraction=0.0).examples("validation"))


# ---------------------------------------------------------------- TFDS


def test_tfds_builder_builds_offline_and_reads_back(tmp_path):
    from musiclm_jax.data.tfds_builder import build_manifest_dataset

    lengths = {"a.wav": 1.0, "b.flac": 0.5, "c.wav": 1.5, "d.wav": 2.0}  # whole samples at both rates
    records = []
    for i, (name, seconds) in enumerate(lengths.items()):
        write(tmp_path / "audio" / name, tone(300 + 100 * i, seconds, sr=22050), sr=22050)
        split = "validation" if i == 3 else "train"
        records.append({"path": f"audio/{name}", "caption": f"clip {name}", "split": split})
    manifest = write_manifest(tmp_path / "m.jsonl", records)
    builder = build_manifest_dataset(manifest, tmp_path / "tfds", sample_rate=SR)
    assert builder.info.splits["train"].num_examples == 3 and builder.info.splits["validation"].num_examples == 1
    got = {}
    for split in ("train", "validation"):
        for ex in builder.as_dataset(split=split).as_numpy_iterator():
            got[ex["id"].decode()] = (split, ex["audio"], ex["caption"].decode())
    assert set(got) == {f"audio/{n}" for n in lengths}
    expected_audio = collect(ManifestSource(manifest, sample_rate=SR), "train")
    for i, (name, seconds) in enumerate(lengths.items()):
        split, audio, caption = got[f"audio/{name}"]
        assert split == ("validation" if i == 3 else "train") and caption == f"clip {name}"
        assert audio.dtype == np.float32 and audio.shape == (int(round(seconds * SR)),)
        if split == "train":
            np.testing.assert_array_equal(audio, expected_audio[f"audio/{name}"].audio)
    # A second call reuses the prepared files (no rebuild, nothing downloaded).
    again = build_manifest_dataset(manifest, tmp_path / "tfds", sample_rate=SR)
    assert again.data_dir == builder.data_dir
