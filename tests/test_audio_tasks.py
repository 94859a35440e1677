"""Raw-audio seqio tasks: whole-second crops, padding rules, registration from gin, inspect."""

import json
import os

import numpy as np
import pytest
import seqio
import tensorflow as tf
from cli import musiclm

import gin
from musiclm_jax.audio.io import write_wav
from musiclm_jax.data import audio_tasks, synthetic
from musiclm_jax.data.bad_input import NoUsableExamplesError
from musiclm_jax.data.sources import ManifestSource

SR = 8000


def _clips(lengths_s):
    """Clips whose sample values encode their time (so a crop's start is readable)."""
    return [
        {
            "audio": (np.arange(int(s * SR)) / SR).astype(np.float32),
            "caption": f"c{i}",
            "id": f"id{i}",
            "sample_rate": np.int32(SR),
        }
        for i, s in enumerate(lengths_s)
    ]


def _dataset(clips):
    return tf.data.Dataset.from_generator(lambda: iter(clips), output_signature=audio_tasks._signature(False))


def test_random_crops_start_on_whole_seconds_and_vary():
    ds = audio_tasks.crop_audio(_dataset(_clips([9.5] * 40)), seconds=3, sample_rate=SR, mode="random")
    starts = []
    with seqio.utils.map_seed_manager(0):
        for ex in ds.as_numpy_iterator():
            start = ex["audio"][0]
            assert start == int(start) and 0 <= start <= 6  # 9 whole seconds, 3-second crop
            np.testing.assert_allclose(ex["audio"], start + np.arange(3 * SR) / SR, atol=1e-4)
            assert ex["audio_length"] == 3 * SR and ex["crop_start_s"] == start
            starts.append(start)
    assert len(set(starts)) >= 5


def test_center_crop_and_padding_rules():
    clips = _clips([10.0, 2.5])
    center = list(audio_tasks.crop_audio(_dataset(clips), seconds=4, sample_rate=SR, mode="center").as_numpy_iterator())
    assert center[0]["crop_start_s"] == 3 and center[0]["audio"][0] == 3.0
    short = center[1]
    assert short["audio"].shape == (4 * SR,) and short["audio_length"] == int(2.5 * SR)
    assert np.all(short["audio"][int(2.5 * SR) :] == 0)  # zero padding after the real samples
    dropped = list(audio_tasks.crop_audio(_dataset(clips), seconds=4, sample_rate=SR, pad="drop").as_numpy_iterator())
    assert [ex["id"] for ex in dropped] == [b"id0"]
    with pytest.raises(ValueError, match="mode"):
        audio_tasks.crop_audio(_dataset(clips), seconds=4, sample_rate=SR, mode="middle")


def test_synthetic_task_carries_labels_that_match_the_renderer():
    source = synthetic.SyntheticSource(sample_rate=SR, duration_s=2.0, num_examples=4, num_validation_examples=2)
    name = audio_tasks.register_audio_task("test_synthetic_labels", source, crop_seconds=1, crop_mode="center")
    examples = list(
        seqio.get_mixture_or_task(name).get_dataset(None, split="validation", shuffle=False).as_numpy_iterator()
    )
    assert len(examples) == 2
    for i, ex in enumerate(examples):
        ref = synthetic.render(synthetic.SPLIT_SEEDS["validation"], i, sample_rate=SR, duration_s=2.0)
        assert ex["caption"].decode() == ref.caption and ex["instrument"].decode() == ref.labels["instrument"]
        assert ex["bpm"] == ref.labels["bpm"] and ex["drums"] == int(ref.labels["drums"])
        np.testing.assert_array_equal(ex["audio"], ref.audio[:SR])  # 2 whole seconds: centre crop starts at 0


def _manifest(tmp_path, n=3, seconds=2.0, bad=()):
    lines = []
    for i in range(n):
        ex = synthetic.render(9, i, sample_rate=SR, duration_s=seconds)
        write_wav(tmp_path / f"{i}.wav", ex.audio, SR)
        lines.append({"path": f"{i}.wav", "caption": ex.caption, "split": "train"})
    for name in bad:
        lines.append({"path": name, "caption": "gone", "split": "train"})
    path = tmp_path / "manifest.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return str(path)


def test_task_registered_from_gin_feeds_dataset_config(tmp_path):
    from musiclm_jax import configurables, gin_utils

    manifest = _manifest(tmp_path)
    gin.clear_config()
    try:
        gin_utils.parse(
            ["data/manifest.gin"],
            [
                f"MANIFEST = '{manifest}'",
                "SAMPLE_RATE = 8000",
                "CROP_SECONDS = 1",
                "manifest/register_audio_task.name = 'gin_manifest_task'",
                "DatasetConfig.mixture_or_task_name = %TASK",
                "DatasetConfig.task_feature_lengths = {'audio': 8000}",
                "DatasetConfig.batch_size = 2",
            ],
        )
        cfg = configurables.DatasetConfig()
    finally:
        gin.clear_config()
    assert cfg.mixture_or_task_name == "gin_manifest_task"
    ds = seqio.get_mixture_or_task("gin_manifest_task").get_dataset(None, split="train", shuffle=False)
    audio = [ex["audio"] for ex in ds.as_numpy_iterator()]
    assert len(audio) == 3 and all(a.shape == (SR,) for a in audio)


def test_no_usable_example_surfaces_through_tf_data(tmp_path):
    manifest = _manifest(tmp_path, n=0, bad=("missing1.wav", "missing2.wav"))
    name = audio_tasks.register_audio_task("test_all_missing", ManifestSource(manifest, sample_rate=SR))
    ds = seqio.get_mixture_or_task(name).get_dataset(None, split="train", shuffle=False)
    with pytest.raises(NoUsableExamplesError, match=r"manifest.*train.*missing_file=2"):
        with audio_tasks.source_errors():
            list(ds.as_numpy_iterator())


@pytest.mark.slow
def test_inspect_cli_writes_wavs_png_and_summary(tmp_path):
    import matplotlib.image

    out = tmp_path / "look"
    r = musiclm("inspect", "--task=synthetic_music", "--num_examples=3", f"--output_dir={out}", "--split=validation")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "3 examples" in r.stdout and "16000 Hz" in r.stdout and "median 10.00" in r.stdout
    wavs = sorted(p for p in os.listdir(out) if p.endswith(".wav"))
    assert len(wavs) == 3
    import soundfile as sf

    audio, sr = sf.read(out / wavs[0])
    assert sr == 16000 and len(audio) == 160000 and np.abs(audio).max() > 0.01
    image = matplotlib.image.imread(out / "spectrograms.png")
    assert image.shape[0] > 300 and image.shape[1] > 500 and image[..., :3].std() > 0.05  # a real picture
    summary = json.loads((out / "summary.json").read_text())
    assert summary["count"] == 3 and summary["files"][0]["caption"]


@pytest.mark.slow
def test_inspect_cli_on_gin_sources_and_bad_input(tmp_path):
    manifest = _manifest(tmp_path)
    r = musiclm(
        "inspect",
        "--gin_file=data/tfds_manifest.gin",
        f"--gin.MANIFEST='{manifest}'",
        f"--gin.TFDS_DIR='{tmp_path / 'tfds'}'",
        "--gin.SAMPLE_RATE=8000",
        "--num_examples=2",
        f"--output_dir={tmp_path / 'tfds_look'}",
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "tfds_manifest_audio" in r.stdout and "8000 Hz" in r.stdout
    assert os.path.exists(tmp_path / "tfds_look" / "spectrograms.png")

    (tmp_path / "bad").mkdir()
    bad = _manifest(tmp_path / "bad", n=0, bad=("x.wav",))
    r = musiclm("inspect", "--gin_file=data/manifest.gin", f"--gin.MANIFEST='{bad}'", f"--output_dir={tmp_path / 'b'}")
    assert r.returncode == 1 and "no usable example" in r.stderr and "missing_file=1" in r.stderr, r.stderr[-2000:]

    r = musiclm(
        "inspect",
        "--gin_file=data/manifest.gin",
        f"--gin.MANIFEST='{tmp_path}/nope.jsonl'",
        f"--output_dir={tmp_path / 'c'}",
    )
    assert r.returncode == 2 and "nope.jsonl" in r.stderr, r.stderr[-2000:]
