"""Caption vocabularies: deterministic SentencePiece training, round trips, reuse, task tokens."""

import itertools
import os
import random
import types

import numpy as np
import pytest
import seqio
import tensorflow as tf

import gin
from musiclm_jax.data import audio_tasks, input_pipeline, synthetic, text_vocab

SR = 16000


def _captions(split="train", n=300):
    return list(synthetic.SyntheticSource(num_examples=n, num_validation_examples=n).captions(split))


def test_training_is_deterministic_and_ignores_caption_order(tmp_path):
    captions = _captions()
    shuffled = list(captions)
    random.Random(0).shuffle(shuffled)
    a = text_vocab.train_caption_vocabulary(captions, str(tmp_path / "a" / "captions"), vocab_size=200)
    b = text_vocab.train_caption_vocabulary(shuffled, str(tmp_path / "b" / "captions"), vocab_size=200)
    assert a == str(tmp_path / "a" / "captions.model") and os.path.exists(tmp_path / "a" / "captions.vocab")
    assert open(a, "rb").read() == open(b, "rb").read()
    assert sorted(os.listdir(tmp_path / "a")) == ["captions.model", "captions.vocab"]  # no temporary files left


def test_round_trip_of_held_out_captions_with_seqio_ids(tmp_path):
    path = text_vocab.train_caption_vocabulary(_captions(), str(tmp_path / "captions"), vocab_size=1000)
    vocab = text_vocab.load_caption_vocabulary(path)
    assert (vocab.pad_id, vocab.eos_id, vocab.unk_id, vocab.bos_id) == (0, 1, 2, -1)
    assert 100 < vocab.vocab_size <= 1000  # vocab_size is an upper bound: these captions cannot fill 1000
    held_out = _captions("validation", 50)
    for caption in held_out:
        ids = vocab.encode(caption)
        assert vocab.decode(ids) == caption
        assert min(ids) > vocab.unk_id  # every piece known: no pad, eos or unk inside a caption
    tf_ids = vocab.encode_tf(tf.constant(held_out[0]))
    assert tf_ids.dtype == tf.int32 and tf_ids.numpy().tolist() == vocab.encode(held_out[0])


def test_bad_input_is_refused_clearly(tmp_path):
    with pytest.raises(ValueError, match="no captions"):
        text_vocab.train_caption_vocabulary([], str(tmp_path / "v"))
    with pytest.raises(ValueError, match="no captions.*3 empty"):
        text_vocab.train_caption_vocabulary(["", "  ", "\n"], str(tmp_path / "v"))
    with pytest.raises(FileNotFoundError, match="nowhere/captions.model"):
        text_vocab.load_caption_vocabulary(str(tmp_path / "nowhere" / "captions.model"))
    assert not os.listdir(tmp_path)  # nothing half-written


def test_synthetic_captions_equal_the_rendered_ones():
    source = synthetic.SyntheticSource(sample_rate=SR, duration_s=1.0, num_examples=5, num_validation_examples=3)
    for split, n in (("train", 4), ("validation", 3)):
        rendered = [ex.caption for ex in itertools.islice(source.examples(split), n)]
        assert list(source.captions(split, n)) == rendered
    assert len(list(source.captions("train"))) == 5 and len(list(source.captions("validation", 99))) == 3
    with pytest.raises(ValueError, match="unknown split"):
        next(source.captions("dev"))


class _ExamplesOnly:
    """A source without `captions`: caption_vocabulary falls back to its examples."""

    name = "examples_only"

    def __init__(self, captions):
        self._captions, self.drawn = captions, 0

    def examples(self, split):
        for c in self._captions:
            self.drawn += 1
            yield types.SimpleNamespace(caption=c, audio=np.zeros(4, np.float32))


class _Untouchable:
    def captions(self, split, limit=None):
        raise AssertionError("an existing vocabulary must not be retrained")


def test_caption_vocabulary_is_stored_with_the_model_and_reused(tmp_path):
    source = synthetic.SyntheticSource(num_examples=200)
    path = text_vocab.caption_vocabulary(str(tmp_path), source, vocab_size=300)
    assert path == str(tmp_path / "text_vocab" / "captions.model")
    mtime = os.stat(path).st_mtime_ns
    assert text_vocab.caption_vocabulary(str(tmp_path), _Untouchable(), vocab_size=50) == path
    assert os.stat(path).st_mtime_ns == mtime

    fallback = _ExamplesOnly(_captions(n=100))
    path = text_vocab.caption_vocabulary(str(tmp_path / "other"), fallback, max_captions=60)
    assert os.path.exists(path) and fallback.drawn == 60


def _register_task(name, vocab_path):
    source = synthetic.SyntheticSource(sample_rate=SR, duration_s=1.0, num_examples=16, num_validation_examples=4)
    return audio_tasks.register_audio_task(name, source, crop_seconds=1, text_vocabulary=vocab_path), source


def _unregister(name):
    if name in seqio.TaskRegistry.names():
        seqio.TaskRegistry.remove(name)
    audio_tasks._registered.pop(name, None)


def test_task_with_vocabulary_batches_text_tokens_padded_with_minus_one(tmp_path):
    source = synthetic.SyntheticSource(num_examples=16)
    vocab_path = text_vocab.caption_vocabulary(str(tmp_path), source, vocab_size=300)
    vocab = text_vocab.load_caption_vocabulary(vocab_path)
    name, source = _register_task("test_text_tokens", vocab_path)
    try:
        task = seqio.get_mixture_or_task(name)
        assert task.output_features["text_tokens"].dtype == tf.int32
        assert not task.output_features["text_tokens"].add_eos
        # Through the batch pipeline, in order (shuffle off), one pass: 16 clips = 4 batches.
        cfg = input_pipeline.DatasetConfig(name, {"audio": SR, "text_tokens": 32}, batch_size=4, shuffle=False)
        batches = list(input_pipeline.BatchIterator(cfg, repeat=False))  # exhausted: no generator left mid-call
    finally:
        _unregister(name)
    assert len(batches) == 4
    # each training visit draws one of the clip's caption variants (data/audio_tasks.py)
    variants = [[c.text for c in synthetic.captions_of(0, i, num=8)] for i in range(16)]
    num_padded = 0
    for b, batch in enumerate(batches):
        tokens = batch["text_tokens"]
        assert tokens.dtype == np.int32 and tokens.shape == (4, 32) and batch["audio"].shape == (4, SR)
        for row, options in zip(tokens, variants[4 * b : 4 * b + 4]):
            matches = [
                vocab.encode(c)[:32]
                for c in options
                if row[: len(vocab.encode(c)[:32])].tolist() == vocab.encode(c)[:32]
            ]
            assert matches, (row, options)
            expected = matches[0]
            assert np.all(row[len(expected) :] == -1)
            num_padded += len(expected) < 32
    assert num_padded > 0


def test_task_keeps_the_caption_string_and_refuses_a_missing_vocabulary(tmp_path):
    vocab_path = text_vocab.train_caption_vocabulary(_captions(), str(tmp_path / "captions"), vocab_size=300)
    name, source = _register_task("test_text_tokens_raw", vocab_path)
    try:
        ex = next(
            seqio.get_mixture_or_task(name)
            .get_dataset(None, split="validation", shuffle=False)
            .take(1)
            .as_numpy_iterator()
        )
    finally:
        _unregister(name)
    caption = next(source.captions("validation"))
    assert ex["caption"].decode() == caption
    assert ex["text_tokens"].dtype == np.int32
    assert ex["text_tokens"].tolist() == text_vocab.load_caption_vocabulary(vocab_path).encode(caption)
    with pytest.raises(FileNotFoundError, match="missing.model"):
        _register_task("test_text_tokens_missing", str(tmp_path / "missing.model"))
    assert "test_text_tokens_missing" not in seqio.TaskRegistry.names()


def test_gin_binds_the_caption_vocabulary_into_a_task(tmp_path):
    from musiclm_jax import configurables, gin_utils

    model_dir = tmp_path / "run"
    gin.clear_config()
    try:
        gin_utils.parse(
            [],
            [
                f"MODEL_DIR = '{model_dir}'",
                "TASK = @mulan_task/register_audio_task()",
                "mulan_task/register_audio_task.name = 'test_gin_text_tokens'",
                "mulan_task/register_audio_task.source = @mulan_task/SyntheticSource()",
                "mulan_task/register_audio_task.text_vocabulary = @caption_vocabulary()",
                "caption_vocabulary.model_dir = %MODEL_DIR",
                "caption_vocabulary.source = @mulan_task/SyntheticSource()",
                "caption_vocabulary.vocab_size = 300",
                "mulan_task/SyntheticSource.num_examples = 50",
                "DatasetConfig.mixture_or_task_name = %TASK",
                "DatasetConfig.task_feature_lengths = {'audio': 16000, 'text_tokens': 32}",
                "DatasetConfig.batch_size = 2",
            ],
        )
        cfg = configurables.DatasetConfig()
        operative = gin.operative_config_str()
    finally:
        gin.clear_config()
    try:
        path = str(model_dir / "text_vocab" / "captions.model")
        assert cfg.mixture_or_task_name == "test_gin_text_tokens" and os.path.exists(path)
        feature = seqio.get_mixture_or_task("test_gin_text_tokens").output_features["text_tokens"]
        assert feature.vocabulary.sentencepiece_model_file == path
        # The reference is called inside register_audio_task's scope; unscoped bindings still apply.
        assert "mulan_task/caption_vocabulary.model_dir" in operative
    finally:
        _unregister("test_gin_text_tokens")
