"""`musiclm precompute`: the cache holds exactly the tokenizers' tokens, is readable by seqio's
own cache reader, resumes without redoing finished shards, counts bad input, and token tasks
crop every stream at the same whole seconds."""

import json
import os

import numpy as np
import pytest
import seqio
from model_dirs import SR

from musiclm_jax import precompute
from musiclm_jax.audio.io import resample, write_wav
from musiclm_jax.data import audio_tasks, token_cache_tasks
from musiclm_jax.data.sources import Example, ManifestSource

LENGTHS_S = (3.0, 4.5)  # two lengths: few compilations


@pytest.fixture(scope="module")
def model_dirs(tokenizer_model_dirs):
    """Random-init tiny MuLan (+ random RVQ), w2v-BERT (+ random k-means), SoundStream at 24 kHz."""
    return tokenizer_model_dirs


def _clip(i, seconds):
    t = np.arange(int(seconds * SR)) / SR
    return (0.3 * np.sin(2 * np.pi * (220 + 40 * i) * t) + 0.05 * np.sin(2 * np.pi * 3 * t)).astype(np.float32)


@pytest.fixture(scope="module")
def manifest_task(tmp_path_factory):
    """5 train clips + a corrupt file, 2 validation clips, as WAVs behind a JSONL manifest."""
    root = tmp_path_factory.mktemp("audio")
    lines = []
    for i in range(7):
        split = "train" if i < 5 else "validation"
        write_wav(root / f"c{i}.wav", _clip(i, LENGTHS_S[i % 2]), SR, subtype="FLOAT")
        lines.append({"path": f"c{i}.wav", "caption": f"clip {i}", "id": f"c{i}", "split": split})
    (root / "broken.wav").write_bytes(b"not audio at all" * 64)
    lines.insert(2, {"path": "broken.wav", "caption": "broken", "id": "broken", "split": "train"})
    (root / "m.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    return audio_tasks.register_audio_task("precompute_test_music", ManifestSource(root / "m.jsonl", sample_rate=SR))


def _expected(model_dirs, task, split):
    """Tokens computed on the fly by the three tokenizers, by clip id."""
    toks = precompute.load_tokenizers(**model_dirs)
    source = audio_tasks.source_of(task)
    out = {}
    for ex in source.examples(split):
        mulan, windows = toks.mulan.audio_tokens_with_windows([ex.audio])
        np.testing.assert_array_equal(mulan, toks.mulan.audio_tokens([ex.audio]))  # one pass gives both
        out[ex.id] = {
            "mulan_tokens": mulan[0],
            "mulan_window_tokens": windows[0],
            "semantic_tokens": toks.semantic.tokenize([ex.audio])[0],
            "acoustic_tokens": toks.acoustic.encode(resample(ex.audio, SR, 24000)[None])[0],
        }
    return out


def _read_cached(cache_root, name, split):
    """Through seqio's own offline-cache reader: a Task with a CacheDatasetPlaceholder, use_cached=True."""
    feat = lambda rank: seqio.Feature(seqio.PassThroughVocabulary(64), add_eos=False, dtype="int32", rank=rank)  # noqa: E731
    if name not in seqio.TaskRegistry.names():
        seqio.TaskRegistry.add(
            name,
            source=seqio.FunctionDataSource(lambda split, shuffle_files: None, splits=("train", "validation")),
            preprocessors=[seqio.CacheDatasetPlaceholder(required=True)],
            output_features={
                "mulan_tokens": feat(1),
                "mulan_window_tokens": feat(2),
                "semantic_tokens": feat(1),
                "acoustic_tokens": feat(2),
            },
        )
    old = seqio.get_global_cache_dirs()
    seqio.set_global_cache_dirs([str(cache_root)])
    try:
        ds = seqio.get_mixture_or_task(name).get_dataset(None, split=split, use_cached=True, shuffle=False)
        return {ex["id"].decode(): ex for ex in ds.as_numpy_iterator()}
    finally:
        seqio.set_global_cache_dirs(old)


@pytest.fixture(scope="module")
def cache(model_dirs, manifest_task, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("cache") / "precompute_test_cached")
    summary = precompute.precompute_tokens(
        task=manifest_task, splits=("train", "validation"), output_dir=out, num_shards=2, **model_dirs
    )
    return out, summary


def test_cache_equals_tokenizers_and_counts_bad_input(cache, model_dirs, manifest_task):
    out, summary = cache
    train = summary["splits"]["train"]
    assert train["clips"] == 5 and train["skipped"] == {"corrupt": 1}
    assert train["seconds"] == pytest.approx(3 * 3.0 + 2 * 4.5)
    assert summary["splits"]["validation"]["clips"] == 2
    assert json.load(open(os.path.join(out, "summary.json")))["splits"]["train"]["clips"] == 5
    meta = json.load(open(os.path.join(out, "precompute.json")))
    assert meta["rates"] == {"semantic": 25.0, "acoustic": 200.0} and meta["levels"] == {"mulan": 4, "acoustic": 4}
    for split in ("train", "validation"):
        cached = _read_cached(os.path.dirname(out), "precompute_test_cached", split)
        expected = _expected(model_dirs, manifest_task, split)
        assert sorted(cached) == sorted(expected)
        read = {ex["id"]: ex for ex in token_cache_tasks.read_cache(out, split)}  # our reader agrees with seqio's
        assert sorted(read) == sorted(cached)
        for clip_id, ex in read.items():
            assert "melody_tokens" not in ex  # only a cache made with a melody model has them
            for k in token_cache_tasks.TOKEN_FEATURES:
                if k != "melody_tokens":
                    np.testing.assert_array_equal(ex[k], cached[clip_id][k], err_msg=f"read_cache {clip_id} {k}")
        for clip_id, want in expected.items():
            for k, v in want.items():
                np.testing.assert_array_equal(cached[clip_id][k], v, err_msg=f"{clip_id} {k}")
        seconds = {cid: LENGTHS_S[int(cid[1]) % 2] for cid in cached}
        assert all(cached[c]["semantic_tokens"].shape == (int(np.ceil(seconds[c] * 25)),) for c in cached)
        assert all(cached[c]["acoustic_tokens"].shape == (int(np.ceil(seconds[c] * 200)), 4) for c in cached)
        # tiny MuLan: 2 s windows at a 1 s hop -> 2 windows of a 3 s clip, 4 of a 4.5 s one
        assert all(cached[c]["mulan_window_tokens"].shape == ({3.0: 2, 4.5: 4}[seconds[c]], 4) for c in cached)
    n_tokens = sum(
        int(s.size) for s in (e["semantic_tokens"] for e in _expected(model_dirs, manifest_task, "train").values())
    )
    assert train["tokens"]["semantic_tokens"] == n_tokens


def test_second_run_skips_finished_shards(cache, model_dirs, manifest_task, monkeypatch):
    out, _ = cache
    records = sorted(f for f in os.listdir(out) if ".tfrecord-" in f)
    assert len(records) == 4
    before = {f: os.stat(os.path.join(out, f)).st_mtime_ns for f in records}
    calls = []
    real = precompute._Tokenizers.tokenize
    monkeypatch.setattr(precompute._Tokenizers, "tokenize", lambda self, *a: calls.append(1) or real(self, *a))
    again = precompute.precompute_tokens(
        task=manifest_task, splits=("train", "validation"), output_dir=out, num_shards=2, **model_dirs
    )
    assert calls == [] and again["shards_run"] == 0 and again["splits_skipped"] == ["train", "validation"]
    assert {f: os.stat(os.path.join(out, f)).st_mtime_ns for f in records} == before
    # A lost shard (with its split's info) is redone alone; the others are kept.
    os.remove(os.path.join(out, records[1]))
    os.remove(os.path.join(out, "info.train.json"))
    redone = precompute.precompute_tokens(
        task=manifest_task, splits=("train", "validation"), output_dir=out, num_shards=2, **model_dirs
    )
    assert redone["shards_run"] == 1 and redone["shards_skipped"] == 3 and len(calls) == 1
    assert redone["splits"] == again["splits"]
    assert os.stat(os.path.join(out, records[0])).st_mtime_ns == before[records[0]]
    # A cache is never mixed with another task's or models' tokens.
    with pytest.raises(ValueError, match="made with task"):
        precompute.precompute_tokens(
            task="synthetic_music", splits=("train",), output_dir=out, num_shards=2, **model_dirs
        )
    with pytest.raises(FileNotFoundError, match="model.json"):
        precompute.precompute_tokens(
            task=manifest_task,
            splits=("train",),
            output_dir=out,
            num_shards=2,
            **{**model_dirs, "soundstream_dir": out + "/nowhere"},
        )


def test_token_task_crops_align_across_streams(cache):
    out, _ = cache
    whole = token_cache_tasks.register_token_task("precompute_test_whole", out)
    full = {
        ex["id"].decode(): ex
        for ex in seqio.get_mixture_or_task(whole).get_dataset(None, split="train", shuffle=False).as_numpy_iterator()
    }
    name = token_cache_tasks.register_token_task("precompute_test_2s", out, crop_seconds=2)
    task = seqio.get_mixture_or_task(name)

    def crops(split, seed):
        ds = task.get_dataset(None, split=split, shuffle=False, seed=seed, num_epochs=1)
        return {ex["id"].decode(): ex for ex in ds.as_numpy_iterator()}

    train = crops("train", 0)
    starts = set()
    for cid, ex in train.items():
        s, ref = int(ex["crop_start_s"]), full[cid]
        assert ex["semantic_tokens"].shape == (50,) and ex["acoustic_tokens"].shape == (400, 4)
        np.testing.assert_array_equal(ex["semantic_tokens"], ref["semantic_tokens"][s * 25 : (s + 2) * 25])
        np.testing.assert_array_equal(ex["acoustic_tokens"], ref["acoustic_tokens"][s * 200 : (s + 2) * 200])
        np.testing.assert_array_equal(ex["mulan_tokens"], ref["mulan_tokens"])  # whole-clip condition
        assert 0 <= s <= len(ref["semantic_tokens"]) // 25 - 2
        starts.add(s)
    assert {c: int(e["crop_start_s"]) for c, e in crops("train", 0).items()} == {
        c: int(e["crop_start_s"]) for c, e in train.items()
    }
    others = [{c: int(e["crop_start_s"]) for c, e in crops("train", seed).items()} for seed in (1, 2, 3)]
    assert any(o != {c: int(e["crop_start_s"]) for c, e in train.items()} for o in others)  # seeded, not fixed
    # Validation: centred, the same for every seed (3 s -> start 0, 4.5 s -> whole 4 s -> start 1).
    for seed in (0, 5):
        val = crops("validation", seed)
        assert {c: int(e["crop_start_s"]) for c, e in val.items()} == {"c5": 1, "c6": 0}
    # Per-window MuLan tokens: a 2 s crop from second s (centre s + 1) gets the 2 s window at s.
    windowed = token_cache_tasks.register_token_task(
        "precompute_test_2s_windows", out, crop_seconds=2, mulan_per_window=True
    )
    for seed in (0, 1):
        for ex in (
            seqio.get_mixture_or_task(windowed)
            .get_dataset(None, split="train", shuffle=False, seed=seed)
            .as_numpy_iterator()
        ):
            ref = full[ex["id"].decode()]
            np.testing.assert_array_equal(ex["mulan_tokens"], ref["mulan_window_tokens"][int(ex["crop_start_s"])])
    # Clips shorter than the crop stay whole ('keep'; the batch pipeline pads) or go ('drop').
    long = token_cache_tasks.register_token_task("precompute_test_4s", out, crop_seconds=4, pad="drop")
    kept = seqio.get_mixture_or_task(long).get_dataset(None, split="train", shuffle=False, seed=0)
    assert sorted(ex["id"].decode() for ex in kept.as_numpy_iterator()) == ["c1", "c3"]
    with pytest.raises(FileNotFoundError, match="musiclm precompute"):
        token_cache_tasks.register_token_task("precompute_test_none", os.path.dirname(out))


class _ClipsWithAnEmptyOne:
    """A duck-typed raw-audio source whose second clip is empty: it decodes, the tokenizers refuse it."""

    name, sample_rate = "clips_with_an_empty_one", SR

    def __init__(self):
        from musiclm_jax.data.bad_input import BadInputReport

        self.report = BadInputReport(self.name)

    def examples(self, split):
        yield Example("ok", _clip(0, 3.0), SR, "fine")
        yield Example("empty", np.zeros(0, np.float32), SR, "nothing")


def test_rejected_clip_is_counted_not_fatal(model_dirs, tmp_path):
    name = audio_tasks.register_audio_task("precompute_test_empty", _ClipsWithAnEmptyOne())
    summary = precompute.precompute_tokens(
        task=name, splits=("train",), output_dir=str(tmp_path), num_shards=1, **model_dirs
    )
    assert summary["splits"]["train"]["clips"] == 1
    assert summary["splits"]["train"]["skipped"] == {precompute.TOKENIZER_REJECTED: 1}
