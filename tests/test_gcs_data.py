"""gs:// for data, token caches and evals, against a real GCS API server on localhost
(conftest.gcs_emulator): the sources read manifests and audio from a bucket, precompute writes a
complete token cache there (byte-identical to a local run's) and resumes it, and the eval and
`musiclm inspect` write their outputs there. Nothing here reaches the network: TensorFlow's own
GCS client (fixed endpoint) is never used; reading a cache's TFRecords with tf.data is not tested
here for that reason."""

import json
import uuid

import numpy as np
import pytest
from model_dirs import CODEC_SR, SR

from musiclm_jax import fileio, precompute
from musiclm_jax.audio.io import load_audio, write_wav
from musiclm_jax.data import audio_tasks, token_cache_tasks
from musiclm_jax.data.sources import FolderSource, ManifestSource, MusicCapsSource

LENGTHS_S = (3.0, 4.5)  # test_precompute's lengths: the tokenizers' compilations are shared


def _clip(i, seconds):
    t = np.arange(int(seconds * SR)) / SR
    return (0.3 * np.sin(2 * np.pi * (220 + 40 * i) * t) + 0.05 * np.sin(2 * np.pi * 3 * t)).astype(np.float32)


@pytest.fixture(scope="module")
def bucket_dir(gcs_emulator):
    return f"{gcs_emulator}/data-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def data(bucket_dir, tmp_path_factory):
    """The same collection locally and on the bucket: 2 train clips + a corrupt file, 1
    validation clip (WAVs in audio/ behind data/m.jsonl, relative paths), plus a manifest whose
    paths are absolute URLs and name one missing file."""
    root = tmp_path_factory.mktemp("gcs_data")
    (root / "data" / "audio").mkdir(parents=True)
    lines = []
    for i in range(3):
        write_wav(root / "data" / "audio" / f"c{i}.wav", _clip(i, LENGTHS_S[i % 2]), SR, subtype="FLOAT")
        split = "train" if i < 2 else "validation"
        lines.append({"path": f"audio/c{i}.wav", "caption": f"clip {i}", "id": f"c{i}", "split": split})
    (root / "data" / "audio" / "broken.wav").write_bytes(b"not audio at all" * 64)
    lines.insert(1, {"path": "audio/broken.wav", "caption": "broken", "id": "broken", "split": "train"})
    (root / "data" / "m.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    url = f"{bucket_dir}/data"
    fileio.copytree(root / "data", url)
    absolute = [{**x, "path": f"{url}/{x['path']}"} for x in lines if x["split"] == "train"]
    absolute.append({"path": f"{url}/audio/gone.wav", "caption": "gone", "id": "gone", "split": "train"})
    fileio.write_text(f"{bucket_dir}/elsewhere/abs.jsonl", "\n".join(json.dumps(x) for x in absolute))
    return {
        "local": str(root / "data" / "m.jsonl"),
        "url": f"{url}/m.jsonl",
        "absolute": f"{bucket_dir}/elsewhere/abs.jsonl",
    }


def _examples(source, split):
    return {ex.id: (ex.caption, ex.audio) for ex in source.examples(split)}


def test_sources_read_manifests_folders_and_musiccaps_on_a_bucket(data, bucket_dir):
    local = ManifestSource(data["local"], sample_rate=SR)
    remote = ManifestSource(data["url"], sample_rate=SR)
    assert remote.manifest_path == data["url"]  # never made into <cwd>/gs:/...
    for split in ("train", "validation"):
        want, got = _examples(local, split), _examples(remote, split)
        assert sorted(got) == sorted(want) and got
        for k in want:
            assert got[k][0] == want[k][0]
            np.testing.assert_array_equal(got[k][1], want[k][1])
    assert remote.reports["train"].skipped() == local.reports["train"].skipped() == {"corrupt": 1}
    absolute = ManifestSource(data["absolute"], sample_rate=SR)
    assert sorted(_examples(absolute, "train")) == ["c0", "c1"]
    assert absolute.reports["train"].skipped() == {"corrupt": 1, "missing_file": 1}
    # load_audio of a URL: the same samples, errors and info name the URL.
    audio, info = load_audio(f"{bucket_dir}/data/audio/c0.wav", sample_rate=SR, start_s=1.0, end_s=2.0)
    assert info.path == f"{bucket_dir}/data/audio/c0.wav" and audio.shape == (SR,)
    np.testing.assert_array_equal(audio, _clip(0, 3.0)[SR : 2 * SR])

    # A folder with a caption sidecar and a hidden folder (skipped), and MusicCaps over a bucket.
    folder = f"{bucket_dir}/folder"
    fileio.copy(f"{bucket_dir}/data/audio/c0.wav", f"{folder}/a/x.wav")
    fileio.write_text(f"{folder}/a/x.txt", " a caption \n")
    fileio.copy(f"{bucket_dir}/data/audio/c1.wav", f"{folder}/.hidden/y.wav")
    source = FolderSource(folder, sample_rate=SR, validation_fraction=0.0)
    assert {k: v[0] for k, v in _examples(source, "train").items()} == {"a/x.wav": "a caption"}
    fileio.copy(f"{bucket_dir}/data/audio/c2.wav", f"{bucket_dir}/mc/audio/[yt1] title.wav")
    fileio.write_text(
        f"{bucket_dir}/mc/musiccaps.csv",
        "ytid,start_s,end_s,caption,aspect_list,is_audioset_eval\nyt1,1,3,calm,\"['calm']\",False\n"
        "yt2,0,2,absent,[],False\n",
    )
    mc = MusicCapsSource(f"{bucket_dir}/mc/musiccaps.csv", f"{bucket_dir}/mc/audio", sample_rate=SR)
    got = _examples(mc, "train")
    assert sorted(got) == ["yt1"] and got["yt1"][1].shape == (2 * SR,)
    assert mc.reports["train"].skipped() == {"missing_file": 1}


@pytest.fixture(scope="module")
def caches(data, bucket_dir, tokenizer_model_dirs, tmp_path_factory):
    """The same task precomputed into a local folder and into the bucket."""
    out = {}
    for where, manifest in (("local", data["local"]), ("url", data["url"])):
        task = audio_tasks.register_audio_task(f"gcs_test_music_{where}", ManifestSource(manifest, sample_rate=SR))
        cache = str(tmp_path_factory.mktemp("gcs_cache")) if where == "local" else f"{bucket_dir}/cache"
        summary = precompute.precompute_tokens(
            task=task, splits=("train", "validation"), output_dir=cache, num_shards=2, **tokenizer_model_dirs
        )
        out[where] = (task, cache, summary)
    return out


def _cache_files(cache):
    return sorted(fileio.listdir(cache)), sorted(fileio.listdir(fileio.join(cache, "shards")))


def test_precompute_writes_a_complete_cache_to_a_bucket_equal_to_a_local_one(caches):
    (_, local, local_summary), (task, remote, summary) = caches["local"], caches["url"]
    assert summary["output_dir"] == remote
    assert summary["splits"] == local_summary["splits"]
    assert summary["splits"]["train"]["clips"] == 2 and summary["splits"]["train"]["skipped"] == {"corrupt": 1}
    names, shard_stats = _cache_files(remote)
    assert (names, shard_stats) == _cache_files(local)  # nothing more (no temporary names), nothing less
    assert {"COMPLETED", "precompute.json", "summary.json", "info.train.json", "stats.validation.json"} <= set(names)
    records = [n for n in names if ".tfrecord-" in n]
    assert len(records) == 4
    for name in records:  # byte-identical shards (the empty validation shard included)
        assert fileio.read_bytes(fileio.join(remote, name)) == fileio.read_bytes(fileio.join(local, name)), name
    for name in [n for n in names if n.startswith(("info.", "stats."))]:
        assert fileio.read_json(fileio.join(remote, name)) == fileio.read_json(fileio.join(local, name)), name
    for name in shard_stats:
        assert fileio.read_json(fileio.join(remote, "shards", name)) == fileio.read_json(
            fileio.join(local, "shards", name)
        )
    meta = token_cache_tasks.load_cache_meta(remote)  # read through fileio
    assert meta["task"] == task and meta["splits"] == ["train", "validation"]
    assert meta["model_dirs"] == token_cache_tasks.load_cache_meta(local)["model_dirs"]
    # The records themselves, parsed after copying them down: the clips' ids, in shard order.
    import tensorflow as tf

    with fileio.local_copy(fileio.join(remote, "train.tfrecord-00000-of-00002")) as path:
        records = [tf.train.Example.FromString(r.numpy()) for r in tf.data.TFRecordDataset(path)]
    assert [r.features.feature["id"].bytes_list.value[0] for r in records] == [b"c0", b"c1"]  # broken: shard 1


def test_precompute_on_a_bucket_skips_finished_shards_and_redoes_a_lost_one(caches, tokenizer_model_dirs, monkeypatch):
    (_, local, _), (task, remote, first) = caches["local"], caches["url"]
    records = sorted(n for n in fileio.listdir(remote) if ".tfrecord-" in n)
    calls = []
    real = precompute._Tokenizers.tokenize
    monkeypatch.setattr(precompute._Tokenizers, "tokenize", lambda self, *a: calls.append(1) or real(self, *a))
    run = lambda: precompute.precompute_tokens(  # noqa: E731
        task=task, splits=("train", "validation"), output_dir=remote, num_shards=2, **tokenizer_model_dirs
    )
    again = run()
    assert calls == [] and again["shards_run"] == 0 and again["splits_skipped"] == ["train", "validation"]
    train = [n for n in records if n.startswith("train.")]
    for lost in (train[0], "shards/train-00000-of-00002.json", "info.train.json"):
        fileio.remove(fileio.join(remote, lost))
    # A worker that dies mid-shard leaves neither the shard nor its counts, so the shard is redone.
    monkeypatch.setattr(precompute._Tokenizers, "tokenize", lambda self, *a: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        run()
    assert not fileio.exists(fileio.join(remote, train[0]))
    assert not fileio.exists(token_cache_tasks.shard_stats_path(remote, "train", 0, 2))
    monkeypatch.setattr(precompute._Tokenizers, "tokenize", lambda self, *a: calls.append(1) or real(self, *a))
    redone = run()
    assert redone["shards_run"] == 1 and redone["shards_skipped"] == 3 and len(calls) == 1
    assert redone["splits"] == first["splits"]
    assert fileio.read_bytes(fileio.join(remote, train[0])) == fileio.read_bytes(fileio.join(local, train[0]))
    assert _cache_files(remote) == _cache_files(local)


def test_eval_writes_results_audio_tensorboard_and_report_to_a_bucket(bucket_dir):
    """generate_and_score with given generations (no model: the cheapest eval) into gs://."""
    from musiclm_jax.evaluation import attributes, eval_sets, text_to_music

    out = f"{bucket_dir}/eval"
    # A saved classifier on the bucket is loaded, not retrained (evaluate_text_to_music keeps it in the eval dir).
    attributes.save_classifier(f"{out}/attribute_classifier", {"w": np.arange(3.0)}, attributes.ClassifierConfig())
    classifier = text_to_music.SyntheticAttributeClassifier(f"{out}/attribute_classifier")
    np.testing.assert_array_equal(classifier.params["w"], np.arange(3.0))
    assert fileio.listdir(f"{out}/attribute_classifier") == ["config.json", "params.msgpack"]

    items = eval_sets.synthetic_eval_set(2, 0.5, sample_rate=CODEC_SR)
    references = np.stack([i.reference for i in items])
    results = text_to_music.generate_and_score(
        out, items, generated=references[::-1], generated_sample_rate=CODEC_SR, embedders={}, num_report_samples=1
    )
    assert fileio.read_json(f"{out}/{text_to_music.RESULTS_FILE}") == json.loads(json.dumps(results))
    assert results["output_dir"] == out and {"register", "drums"} <= set(results["adherence"])
    for k, row in enumerate(results["items"]):
        audio, info = load_audio(f"{out}/{row['generated_wav']}", sample_rate=CODEC_SR)
        np.testing.assert_allclose(audio, references[::-1][k], atol=1e-4)  # PCM_16
    assert fileio.glob(f"{out}/tensorboard", "events.out.tfevents.*")
    page = fileio.read_text(f"{out}/report.html")
    links = [s.split("'")[0] for s in page.split("src='")[1:]]
    assert any(link.startswith("plots/") for link in links) and any(link.startswith("audio/") for link in links)
    for link in links:
        assert fileio.isfile(f"{out}/{link}"), link


def test_inspect_writes_wavs_png_and_summary_to_a_bucket(data, bucket_dir):
    from musiclm_jax.inspect_data import inspect_task

    task = audio_tasks.register_audio_task("gcs_test_inspect", ManifestSource(data["url"], sample_rate=SR))
    out = f"{bucket_dir}/inspect"
    summary = inspect_task(task=task, num_examples=2, output_dir=out, split="train")
    assert summary.count == 2
    assert fileio.read_json(f"{out}/summary.json")["count"] == 2
    names = fileio.listdir(out)
    assert "spectrograms.png" in names and sorted(f["wav"] for f in summary.files) == sorted(
        n for n in names if n.endswith(".wav")
    )
    audio, _ = load_audio(f"{out}/{summary.files[0]['wav']}", sample_rate=SR)
    assert audio.shape == (int(LENGTHS_S[0] * SR),)


@pytest.mark.slow
def test_evaluate_checkpoint_reads_and_writes_a_model_dir_on_a_bucket(bucket_dir, tokenizer_model_dirs):
    """`musiclm eval` of the tiny random SoundStream whose model dir is on the bucket: the
    checkpoint is restored from there and the summaries, media, codec report and
    eval-<step>.json (last) are written there."""
    from model_dirs import gin_model

    from musiclm_jax import eval as eval_lib
    from musiclm_jax.data.input_pipeline import DatasetConfig

    model_dir = f"{bucket_dir}/soundstream"
    fileio.copytree(tokenizer_model_dirs["soundstream_dir"], model_dir)
    model = gin_model(
        "models/soundstream/tiny.gin",
        "SoundStream",
        [f"SoundStreamConfig.sample_rate = {CODEC_SR}", "SEANetConfig.strides = (4, 5, 6)"],
    )
    cfg = DatasetConfig("synthetic_music_24k", {"audio": 1200}, batch_size=8, split="validation", shuffle=False)
    results = eval_lib.evaluate_checkpoint(model=model, model_dir=model_dir, eval_dataset_cfg=cfg, eval_steps=1)
    report = fileio.read_json(f"{model_dir}/eval-1.json")
    assert report["metrics"] == pytest.approx(results) and report["checkpoint"] == f"{model_dir}/checkpoints"
    assert fileio.exists(f"{model_dir}/codec-quality-1.png")
    assert fileio.glob(f"{model_dir}/eval", "events.out.tfevents.*")
    media = fileio.listdir(f"{model_dir}/eval-1-media")
    assert "example_0.png" in media and "example_0_reconstruction.wav" in media
