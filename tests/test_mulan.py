"""MuLan: the contrastive towers learn on synthetic music, the loss is global-batch under sharding,
the at-chance guard fires on a model that cannot learn, and MuLan tokens carry the match."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from musiclm_jax.audio.mel import log_mel
from musiclm_jax.data import synthetic
from musiclm_jax.data.text_vocab import load_caption_vocabulary, train_caption_vocabulary
from musiclm_jax.models.mulan import (
    MuLan,
    MuLanConfig,
    contrastive_loss,
    cycle_consistency,
    is_at_chance,
    log_mel_summary,
    recall_at_k,
    window_starts,
)
from musiclm_jax.nn.encoders import EncoderConfig, ResNetConfig
from musiclm_jax.tokenizers import mulan as mulan_tok
from musiclm_jax.training.partitioning import Partitioner, unbox

SR, SECONDS, TEXT_LEN, VOCAB = 16000, 2.0, 32, 512
N_TRAIN, N_HELD_OUT, BATCH, STEPS = 1024, 128, 32, 300


def tiny_config(**overrides) -> MuLanConfig:
    enc = EncoderConfig(num_layers=2, num_heads=4, head_dim=16, d_model=64, d_ff=128)
    kwargs = dict(
        n_fft=640,
        hop_length=320,
        n_mels=32,
        audio_encoder="transformer",
        spectrogram_transformer=enc,
        patch_frames=5,
        patch_mels=8,
        max_patches=64,
        text_encoder=enc,
        vocab_size=VOCAB,
        max_text_length=TEXT_LEN,
        embed_dim=64,
        window_seconds=SECONDS,
        hop_seconds=1.0,
        rvq_levels=4,
        rvq_codebook_size=16,
        chance_patience=3,
    )
    kwargs.update(overrides)
    return MuLanConfig(**kwargs)


def init_params(model: MuLan, seed: int = 0):
    shapes = {"audio": (1, int(SR * SECONDS)), "text_tokens": (1, TEXT_LEN)}
    return unbox(model.get_initial_variables(jax.random.PRNGKey(seed), shapes))["params"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    train = [synthetic.render(11, i, sample_rate=SR, duration_s=SECONDS) for i in range(N_TRAIN)]
    held_out = [synthetic.render(12, i, sample_rate=SR, duration_s=SECONDS) for i in range(N_HELD_OUT)]
    # Captions that state the main attributes (the source's own state a random few: retrieval among
    # 128 clips needs specific ones; tests/test_captions.py covers the caption generator).
    dense = ("instrument", "tempo_class", "mode", "register", "drums", "loudness")
    for seed, examples in ((11, train), (12, held_out)):
        for i, e in enumerate(examples):
            e.caption = synthetic.captions_of(seed, i, require=dense)[0].text
    path = train_caption_vocabulary(
        [e.caption for e in train], str(tmp_path_factory.mktemp("vocab") / "captions"), vocab_size=VOCAB
    )
    vocab = load_caption_vocabulary(path)

    def ids(captions):
        out = np.full((len(captions), TEXT_LEN), -1, np.int32)
        for i, c in enumerate(captions):
            x = list(vocab.encode(c))[:TEXT_LEN]
            out[i, : len(x)] = x
        return out

    return {
        "train": {"audio": np.stack([e.audio for e in train]), "text_tokens": ids([e.caption for e in train])},
        "held_out": {"audio": np.stack([e.audio for e in held_out]), "text_tokens": ids([e.caption for e in held_out])},
        "held_out_captions": [e.caption for e in held_out],
        "vocab": vocab,
    }


def train_mulan(data, *, shuffle_captions: bool, steps: int = STEPS, evals: int = 4):
    """Adam on the model's loss; returns params and the eval history (held-out eval loss at
    batch 32, the eval batch of a run) taken `evals` times."""
    model = MuLan(tiny_config())
    params = init_params(model)
    tx = optax.chain(
        optax.clip_by_global_norm(1.0),
        optax.adamw(optax.warmup_cosine_decay_schedule(0.0, 2e-3, 20, steps), weight_decay=0.01),
    )
    opt = tx.init(params)

    @jax.jit
    def step(p, o, batch, rng):
        (loss, _), g = jax.value_and_grad(model.loss_fn, has_aux=True)(p, batch, rng)
        updates, o = tx.update(g, o, p)
        return optax.apply_updates(p, updates), o, loss

    eval_fn = jax.jit(model.eval_fn)
    held = {k: v[:BATCH] for k, v in data["held_out"].items()}
    rng = np.random.default_rng(0)
    history, losses = [], []
    for s in range(steps):
        idx = rng.choice(N_TRAIN, BATCH, replace=False)
        text_idx = rng.permutation(idx) if shuffle_captions else idx  # captions of other clips: nothing to learn
        batch = {"audio": data["train"]["audio"][idx], "text_tokens": data["train"]["text_tokens"][text_idx]}
        params, opt, loss = step(params, opt, batch, jax.random.PRNGKey(s))
        losses.append(float(loss))
        if (s + 1) % (steps // evals) == 0:
            history.append({k: float(v) for k, v in eval_fn(params, held).items()})
    return model, params, history, losses


@pytest.fixture(scope="module")
def trained(data):
    return train_mulan(data, shuffle_captions=False)


def test_recall_and_cycle_consistency_closed_forms():
    eye = np.eye(4)
    assert recall_at_k(eye, eye, (1,)) == {1: 1.0}
    q = np.eye(3)
    c = np.array([[0.6, 0.8, 0.0], [0.8, 0.6, 0.0], [0.0, 0.0, 1.0]])  # clips 0 and 1 each rank second
    assert recall_at_k(q, c, (1, 2)) == {1: pytest.approx(1 / 3), 2: 1.0}
    swapped = eye[[1, 0, 2, 3]]
    # everything at one point: ties count against the query, so recall@1 is 0, not 1
    same = np.ones((4, 2)) / np.sqrt(2)
    assert recall_at_k(same, same, (1, 4)) == {1: 0.0, 4: 1.0}
    assert cycle_consistency(eye, eye) == pytest.approx(1.0)
    assert cycle_consistency(eye, swapped) == pytest.approx(0.5)


def test_window_starts_cover_any_length():
    assert window_starts(5, 10, 1) == [0]
    assert window_starts(10, 10, 1) == [0]
    assert window_starts(12, 10, 1) == [0, 1, 2]
    assert window_starts(25, 10, 4) == [0, 4, 8, 12, 16]  # the last window reaches the end
    with pytest.raises(ValueError):
        window_starts(0, 10, 1)


def test_sharded_loss_equals_single_device():
    """8 simulated devices, batch split 8 ways: the gathered loss (and its gradient) is the loss
    of the whole global batch, as on one device. At initialisation it is at chance, ln(batch),
    and the embeddings are unit norm."""
    assert jax.device_count() == 8
    model = MuLan(tiny_config())
    params = init_params(model)
    rng = np.random.default_rng(1)
    batch = {
        "audio": 0.1 * rng.standard_normal((16, int(SR * SECONDS))).astype(np.float32),
        "text_tokens": rng.integers(3, 300, (16, TEXT_LEN)).astype(np.int32),
    }
    loss_and_grad = jax.value_and_grad(lambda p, b: model.loss_fn(p, b, None)[0])
    ref_loss, ref_grad = jax.jit(loss_and_grad)(params, batch)

    part = Partitioner(ici_mesh_shape=(8, 1, 1))
    fn = part.compile(
        loss_and_grad,
        in_shardings=(part.replicated, {k: part.batch_sharding(2) for k in batch}),
        out_shardings=part.replicated,
    )
    loss, grad = fn(params, part.global_batch(batch))
    assert float(loss) == pytest.approx(float(ref_loss), rel=1e-5)
    assert abs(float(loss) - np.log(16)) < 0.5
    out = jax.jit(model.eval_outputs)(params, batch)
    for emb in out.values():
        np.testing.assert_allclose(np.linalg.norm(np.asarray(emb), axis=-1), 1.0, atol=1e-5)
    for a, b in zip(jax.tree.leaves(grad), jax.tree.leaves(ref_grad)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-3, atol=2e-5)


def test_contrastive_losses_prefer_matched_pairs():
    e = jnp.eye(8, 16)
    scale = jnp.log(1 / 0.07)
    matched, metrics = contrastive_loss(e, e, scale, jnp.zeros(()))
    mismatched, _ = contrastive_loss(e, jnp.roll(e, 1, axis=0), scale, jnp.zeros(()))
    assert float(matched) < 0.01 < np.log(8) < float(mismatched)
    assert float(metrics["chance_loss"]) == pytest.approx(np.log(8))
    # sigmoid: -sum log sigmoid(+-(s * cos + b)) / B, closed form for orthonormal embeddings
    s, b = 10.0, -5.0
    loss, _ = contrastive_loss(e, e, jnp.log(s), jnp.asarray(b), kind="sigmoid")
    expected = -(8 * np.log(1 / (1 + np.exp(-(s + b)))) + 56 * np.log(1 / (1 + np.exp(b)))) / 8
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    mismatched, _ = contrastive_loss(e, jnp.roll(e, 1, axis=0), jnp.log(s), jnp.asarray(b), kind="sigmoid")
    assert float(mismatched) > float(loss)


@pytest.mark.slow
def test_mulan_learns_held_out_retrieval(trained, data):
    """Text-to-audio recall@1 on 128 held-out clips at least 5x chance (1/128)."""
    model, params, history, losses = trained
    out = jax.jit(model.eval_outputs)(params, data["held_out"])
    recall = recall_at_k(np.asarray(out["text_embedding"]), np.asarray(out["audio_embedding"]))
    chance = 1.0 / N_HELD_OUT
    assert recall[1] >= 5 * chance, recall
    assert recall[10] >= 5 * 10 * chance, recall
    assert np.mean(losses[-20:]) < 0.5 * np.log(BATCH)
    assert history[-1]["loss"] < 0.95 * history[-1]["chance_loss"]
    assert model.eval_warning(history) is None


@pytest.mark.slow
def test_at_chance_guard_fires_on_shuffled_captions(data):
    model, _, history, _ = train_mulan(data, shuffle_captions=True, steps=60, evals=3)
    warning = model.eval_warning(history)
    assert warning is not None and "AT CHANCE" in warning, history
    assert not is_at_chance([1.0, 1.0], [2.0, 2.0], 0.01, 2)
    assert not is_at_chance([3.0], [3.0], 0.01, 2)  # fewer evals than the patience


@pytest.mark.slow
def test_mulan_tokens_of_a_caption_match_its_audio(trained, data):
    """The RVQ fitted on audio embeddings quantizes a clip's caption to the same first-level token as
    its audio more often than to the tokens of other clips."""
    model, params, _, _ = trained
    tok = mulan_tok.MuLanEmbedder(model, params, data["vocab"])
    train_emb = tok.embed_audio(data["train"]["audio"][:256])
    codebooks = mulan_tok.fit_rvq(train_emb, levels=4, codebook_size=16, iters=10)
    tokenizer = mulan_tok.MuLanTokenizer(model, params, data["vocab"], codebooks)
    audio_tokens = tokenizer.audio_tokens(data["held_out"]["audio"])
    text_tokens = tokenizer.text_tokens(data["held_out_captions"])
    assert audio_tokens.shape == text_tokens.shape == (N_HELD_OUT, 4) and audio_tokens.dtype == np.int32
    same = np.mean(audio_tokens[:, 0] == text_tokens[:, 0])
    other = np.mean(audio_tokens[:, 0][None, :] == text_tokens[:, 0][:, None])  # all pairs
    assert same > other + 0.1, (same, other)
    cosines = mulan_tok.rvq_reconstruction_cosine(codebooks, train_emb)
    assert cosines[1] < cosines[2] < cosines[4] <= 1.0 + 1e-6


def test_embed_audio_windows_any_length_and_deterministic():
    model = MuLan(tiny_config())
    params = init_params(model)
    emb = mulan_tok.MuLanEmbedder(model, params, window_batch=4)
    rng = np.random.default_rng(3)
    clips = [0.1 * rng.standard_normal(n).astype(np.float32) for n in (8000, 32000, 57000)]
    out = emb.embed_audio(clips)
    assert out.shape == (3, 64)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(out, emb.embed_audio(clips))
    # a clip of exactly one window is that window's embedding
    embed = jax.jit(model.embed_audio)
    one = np.asarray(embed(params, jnp.asarray(clips[1][None])))
    np.testing.assert_allclose(out[1], one[0], atol=1e-5)
    # a 57000-sample clip = mean of its 3 windows at 0, 1 and 2 s (the last one zero-padded)
    windows = [
        np.pad(clips[2][s : s + 32000], (0, max(0, 32000 - len(clips[2][s : s + 32000])))) for s in (0, 16000, 32000)
    ]
    mean = np.asarray(embed(params, jnp.asarray(np.stack(windows)))).mean(0)
    np.testing.assert_allclose(out[2], mean / np.linalg.norm(mean), atol=1e-5)
    with pytest.raises(ValueError, match="empty"):
        emb.embed_audio([np.zeros(0, np.float32)])


def test_rvq_save_load_round_trip(tmp_path):
    x = np.random.default_rng(0).standard_normal((64, 8)).astype(np.float32)
    cb = mulan_tok.fit_rvq(x, levels=3, codebook_size=8, iters=5)
    mulan_tok.save_rvq(str(tmp_path), cb, {"levels": 3})
    loaded, info = mulan_tok.load_rvq(str(tmp_path))
    assert info == {"levels": 3}
    for k in cb:
        np.testing.assert_array_equal(cb[k], loaded[k])
    with pytest.raises(FileNotFoundError, match="fit_mulan_rvq"):
        mulan_tok.load_rvq(str(tmp_path / "missing"))


@pytest.mark.slow
def test_cli_fit_rvq_eval_and_tokenizer(tmp_path, tiny_pipeline):
    """On the tiny pipeline's trained MuLan (its caption vocabulary stored with the model):
    `musiclm fit_mulan_rvq`, `musiclm eval` (retrieval over the pool), then the tokenizer."""
    import json
    import os
    import shutil

    from cli import musiclm

    model_dir = tmp_path / "mulan"
    shutil.copytree(os.path.join(tiny_pipeline[0], "mulan"), model_dir)
    shutil.rmtree(model_dir / "mulan_rvq")
    assert os.path.exists(model_dir / "text_vocab" / "captions.model")
    flags = ["--gin_file=pipeline/tiny/mulan.gin", f"--gin.MODEL_DIR='{model_dir}'"]
    r = musiclm("fit_mulan_rvq", *flags, "--gin.RVQ_EXAMPLES=32", "--gin.RVQ_EVAL_EXAMPLES=8")
    assert r.returncode == 0, r.stderr[-3000:]
    info = json.load(open(model_dir / "mulan_rvq" / "rvq.json"))
    assert (
        info["levels"] == 4
        and info["num_examples"] == 32
        and set(info["reconstruction_cosine"]) == {"train", "validation"}
    )
    r = musiclm("eval", "--gin_file=runs/eval.gin", *flags, "--gin.EVAL_STEPS=2")
    assert r.returncode == 0, r.stderr[-3000:]
    step = max(int(d) for d in os.listdir(model_dir / "checkpoints") if d.isdigit())
    metrics = json.load(open(model_dir / f"eval-{step}.json"))["metrics"]
    assert metrics["retrieval_pool"] == 8 and 0 <= metrics["text_to_audio_recall@1"] <= 1

    tok = mulan_tok.MuLanTokenizer.from_model_dir(str(model_dir))
    clips = [np.random.default_rng(i).standard_normal(n).astype(np.float32) * 0.1 for i, n in enumerate((9000, 50000))]
    audio_tokens = tok.audio_tokens(clips)
    text_tokens = tok.text_tokens(["a slow piano melody in A minor", "fast drums"])
    assert audio_tokens.shape == text_tokens.shape == (2, 4)
    assert audio_tokens.max() < 32 and text_tokens.min() >= 0
    np.testing.assert_array_equal(audio_tokens, tok.audio_tokens(clips))
    with pytest.raises(ValueError, match="empty"):
        tok.text_tokens([" "])


def test_paper_config_sizes():
    """gin/models/mulan/paper.gin: a ResNet-50 audio tower (~23.5M) and a BERT-base-sized text
    tower (~85M + the embedding table), checked with jax.eval_shape (nothing is allocated)."""
    import gin
    from musiclm_jax import gin_registry, gin_utils
    from musiclm_jax.nn.transformer import count_params

    gin.clear_config()
    try:
        gin_utils.parse(["models/mulan/paper.gin"], [])
        model = gin_registry.MuLan()
    finally:
        gin.clear_config()
    c = model.config
    assert (c.audio_encoder, c.n_mels, c.embed_dim, c.window_seconds, c.rvq_levels, c.rvq_codebook_size) == (
        "resnet",
        64,
        128,
        10.0,
        12,
        1024,
    )
    shapes = jax.eval_shape(
        lambda: unbox(
            model.get_initial_variables(
                jax.random.PRNGKey(0), {"audio": (1, c.window_samples), "text_tokens": (1, c.max_text_length)}
            )
        )["params"]
    )
    counts = {k: count_params(v) for k, v in shapes.items()}
    assert 23.3e6 < counts["audio_tower"] < 23.7e6
    text_body = counts["text_tower"] - c.vocab_size * 768 - c.max_text_length * 768
    assert 84e6 < text_body < 86e6, counts


def test_log_mel_summary_reads_band_levels_and_the_beat_period():
    frames, mels, period = 100, 8, 25  # a click every 25 frames (0.5 s at 50 Hz)
    mel = np.full((1, frames, mels), -4.0, np.float32)
    mel[0, ::period] = 2.0
    mel[0, :, 0] += 1.0  # band 0 louder
    out = np.asarray(log_mel_summary(jnp.asarray(mel), True, 40))
    assert out.shape == (1, 2 * mels + 40)
    np.testing.assert_allclose(out[0, :mels], mel[0].mean(0), rtol=1e-5)
    np.testing.assert_allclose(out[0, mels : 2 * mels], mel[0].std(0), rtol=1e-5)
    ac = out[0, 2 * mels :]  # lags 1..40
    assert int(np.argmax(ac)) + 1 == period
    assert np.asarray(log_mel_summary(jnp.asarray(mel), False, 10)).shape == (1, 10)
    with pytest.raises(ValueError, match="more than"):
        log_mel_summary(jnp.asarray(mel), False, frames)


def test_log_mel_summary_tells_the_tempo_classes_of_synthetic_clips_apart():
    """What the summary adds to a small tower: the synthetic pieces' tempo class (and drums) from
    a linear probe on it alone, on 2 s crops (the patch transformer's embedding read tempo at chance)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    cfg = tiny_config(band_stats=True, onset_autocorr_seconds=1.2)
    seed, n = synthetic.SPLIT_SEEDS["validation"], 64
    audio = np.stack([synthetic.render(seed, i, sample_rate=SR, duration_s=SECONDS).audio for i in range(n)])
    mel = (log_mel(jnp.asarray(audio), SR, cfg.n_fft, cfg.hop_length, cfg.n_mels) + cfg.mel_offset) * cfg.mel_scale
    feats = np.asarray(log_mel_summary(mel, cfg.band_stats, cfg.onset_autocorr_lags))
    for attr, floor in (("tempo_class", 0.7), ("drums", 0.8)):
        y = [str(synthetic.labels_of(seed, i)[attr]) for i in range(n)]
        probe = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=3000))
        assert cross_val_score(probe, feats, y, cv=4).mean() > floor, attr
    # and the model embeds with it (ResNet tower), deterministically
    small_resnet = ResNetConfig(stage_sizes=(1, 1, 1, 1), width=16)
    model = MuLan(tiny_config(audio_encoder="resnet", resnet=small_resnet, band_stats=True, onset_autocorr_seconds=1.2))
    params = init_params(model)
    emb = np.asarray(jax.jit(model.embed_audio)(params, jnp.asarray(audio[:2])))
    assert emb.shape == (2, 64) and np.all(np.isfinite(emb))


def test_summary_config_errors():
    with pytest.raises(ValueError, match="onset_autocorr_seconds"):
        tiny_config(onset_autocorr_seconds=-1.0)
    with pytest.raises(ValueError, match="shorter than"):
        tiny_config(onset_autocorr_seconds=2.0)
