"""The melody model: its pitch front end reads the played pitch, it learns to find another rendition
of a held-out tune (a shuffled-pairs control stays at chance), and melody tokens are a
time-aligned stream that the semantic stage reads as a condition, dropped out to run text-only."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from musiclm_jax.data import melody_tasks
from musiclm_jax.models.melody import MelodyConfig, MelodyModel, melody_window_starts, pitch_spectrogram
from musiclm_jax.models.stages import StageConfig, StageModel
from musiclm_jax.models.token_layout import NULL_CODE, NULL_COND_ID, TokenLayout
from musiclm_jax.nn.encoders import EncoderConfig
from musiclm_jax.training.partitioning import unbox

SR, SECONDS = 16000, 2.0
N_TRAIN, N_HELD_OUT, BATCH, STEPS = 512, 128, 32, 300


def tiny_config(**overrides) -> MelodyConfig:
    enc = EncoderConfig(num_layers=2, num_heads=4, head_dim=16, d_model=64, d_ff=128, dropout_rate=0.0)
    kwargs = dict(
        n_fft=1024,
        front_end="chroma",
        encoder=enc,
        patch_frames=5,
        patch_bins=12,
        embed_dim=64,
        window_seconds=SECONDS,
        rvq_levels=4,
        rvq_codebook_size=32,
    )
    return MelodyConfig(**{**kwargs, **overrides})


@pytest.fixture(scope="module")
def pairs():
    return {
        "train": melody_tasks.pairs_as_arrays("train", N_TRAIN, sample_rate=SR, seconds=SECONDS),
        "held_out": melody_tasks.pairs_as_arrays("validation", N_HELD_OUT, sample_rate=SR, seconds=SECONDS),
    }


def init_params(model):
    return unbox(model.get_initial_variables(jax.random.PRNGKey(0), {"audio": (1, int(SR * SECONDS))}))["params"]


def held_out_recall(model, params, pairs, partner_order=None) -> dict:
    out = {k: np.asarray(v) for k, v in jax.jit(model.eval_outputs)(params, pairs["held_out"]).items()}
    partners = out["paired_embedding"] if partner_order is None else out["paired_embedding"][partner_order]
    return model.summarize_eval_outputs({"embedding": out["embedding"], "paired_embedding": partners})


def train_melody(pairs, *, shuffle_pairs: bool, steps: int = STEPS):
    """Adam on the model's loss over random batches of the training pairs; with `shuffle_pairs`
    each rendition is paired with another tune's (nothing to learn). Returns the model, params,
    held-out retrieval summary and losses."""
    model = MelodyModel(tiny_config())
    params = init_params(model)
    tx = optax.chain(
        optax.clip_by_global_norm(1.0),
        optax.adamw(optax.warmup_cosine_decay_schedule(0.0, 2e-3, 20, steps), weight_decay=0.01),
    )
    opt = tx.init(params)

    @jax.jit
    def step(p, o, batch):
        (loss, _), g = jax.value_and_grad(model.loss_fn, has_aux=True)(p, batch, None)
        updates, o = tx.update(g, o, p)
        return optax.apply_updates(p, updates), o, loss

    rng = np.random.default_rng(0)
    losses = []
    for _ in range(steps):
        idx = rng.choice(N_TRAIN, BATCH, replace=False)
        other = rng.permutation(idx) if shuffle_pairs else idx
        batch = {"audio": pairs["train"]["audio"][idx], "paired_audio": pairs["train"]["paired_audio"][other]}
        params, opt, loss = step(params, opt, batch)
        losses.append(float(loss))
    return model, params, held_out_recall(model, params, pairs), losses


@pytest.fixture(scope="module")
def trained(pairs):
    return train_melody(pairs, shuffle_pairs=False)


@pytest.fixture(scope="module")
def untrained_recall(pairs):
    """The random-init tower's held-out recall: chroma alone already tells some tunes apart."""
    model = MelodyModel(tiny_config())
    return held_out_recall(model, init_params(model), pairs)["melody_recall@1"]


def test_pitch_front_end_reads_the_played_pitch():
    t = np.arange(int(0.5 * SR)) / SR
    tones = np.stack([np.sin(2 * np.pi * 440.0 * 2 ** (k / 12) * t) for k in (0, 3, 12)]).astype(np.float32)
    pitch = np.asarray(pitch_spectrogram(jnp.asarray(tones), tiny_config(front_end="pitch", n_fft=2048)))
    np.testing.assert_array_equal(pitch[:, 10].argmax(-1), [69 - 36, 72 - 36, 81 - 36])  # A4, C5, A5
    chroma = np.asarray(pitch_spectrogram(jnp.asarray(tones), tiny_config()))
    np.testing.assert_array_equal(chroma[:, 10].argmax(-1), [9, 0, 9])  # A, C, A: the octave is gone
    with pytest.raises(ValueError, match="front_end"):
        tiny_config(front_end="mfcc")
    with pytest.raises(ValueError, match="divide one second"):
        tiny_config(hop_seconds=0.3)


def test_melody_model_learns_held_out_pair_retrieval(trained, pairs, untrained_recall):
    """Each held-out rendition finds the other rendition of its tune among 128, though the two
    differ in timbre, octave, tempo, accompaniment, voice: recall@1 at least 5x chance (1/128)
    and twice the untrained tower's (measured: 0.55 against 0.15). With every partner swapped
    for another tune's, the same embeddings find nothing (no shortcut through the eval)."""
    model, params, summary, losses = trained
    chance = 1.0 / N_HELD_OUT
    assert summary["melody_recall@1"] >= max(5 * chance, 2 * untrained_recall), (summary, untrained_recall)
    assert summary["melody_recall@10"] >= 5 * 10 * chance, summary
    assert np.mean(losses[-20:]) < 0.6 * np.log(BATCH)
    swapped = held_out_recall(model, params, pairs, np.roll(np.arange(N_HELD_OUT), 1))
    assert swapped["melody_recall@1"] <= 3 * chance, swapped


@pytest.mark.slow
def test_shuffled_pairs_control_learns_nothing(pairs, untrained_recall):
    """Trained on pairs of different tunes, the model has nothing to learn: its held-out recall
    stays at the untrained tower's (measured: 0.15 both), far below the real model's."""
    _, _, summary, _ = train_melody(pairs, shuffle_pairs=True, steps=100)
    assert summary["melody_recall@1"] <= max(1.5 * untrained_recall, 3.0 / N_HELD_OUT), (summary, untrained_recall)


def test_melody_windows_are_a_time_aligned_stream():
    assert melody_window_starts(3 * SR, 2 * SR, SR) == [0, SR, 2 * SR]  # a crop of 3 s: 3 windows
    assert melody_window_starts(int(2.5 * SR), 2 * SR, SR) == [0, SR, 2 * SR]
    with pytest.raises(ValueError, match="empty"):
        melody_window_starts(0, 2 * SR, SR)


MELODY_LAYOUT = TokenLayout(streams=(("mulan", 4, 32), ("melody", 4, 32), ("semantic", 1, 16)))


def melody_stage(**overrides) -> StageModel:
    config = dict(
        num_layers=1,
        num_heads=2,
        head_dim=8,
        d_model=16,
        d_ff=32,
        dropout_rate=0.0,
        cond_dropout_rate=0.0,
        layout=MELODY_LAYOUT,
        conditions=(("mulan_tokens", "mulan", 0, 4), ("melody_tokens", "melody", 0, 4)),
        target=("semantic_tokens", "semantic", 0, 1),
        condition_dropout=(("melody_tokens", 0.5),),
    )
    return StageModel(StageConfig(**{**config, **overrides}))


def stage_batch(seed: int, windows: int = 3):
    rng = np.random.default_rng(seed)
    return {
        "mulan_tokens": rng.integers(0, 32, (4, 4)).astype(np.int32),
        "melody_tokens": rng.integers(0, 32, (4, windows, 4)).astype(np.int32),
        "semantic_tokens": rng.integers(0, 16, (4, 10)).astype(np.int32),
    }


def test_melody_stream_ids_follow_the_mulan_ones_and_null_code_is_null_cond():
    model = melody_stage()
    batch = stage_batch(0)
    cond = np.asarray(model.condition_ids(batch))
    assert cond.shape == (4, 4 + 3 * 4)  # 4 MuLan tokens, then 3 windows x 4 levels, frame-major
    melody = cond[:, 4:].reshape(4, 3, 4)
    lo = np.array([MELODY_LAYOUT.offset("melody", level) for level in range(4)])
    np.testing.assert_array_equal(melody - lo, batch["melody_tokens"])
    nulled = dict(batch, melody_tokens=np.full((4, 3, 4), NULL_CODE, np.int32))
    assert np.all(np.asarray(model.condition_ids(nulled))[:, 4:] == NULL_COND_ID)
    padded = dict(batch, melody_tokens=np.full((4, 3, 4), -1, np.int32))  # padding stays padding
    assert np.all(np.asarray(model.condition_ids(padded))[:, 4:] == 0)
    with pytest.raises(ValueError, match="condition_dropout names 'tune'"):
        melody_stage(condition_dropout=(("tune", 0.5),))
    with pytest.raises(ValueError, match=r"must be in \[0, 1\]"):
        melody_stage(condition_dropout=(("melody_tokens", 1.5),))


def test_melody_dropout_one_trains_the_text_only_stage():
    """With melody dropout 1.0 the training loss never sees the tune: any melody tokens give the
    loss of NULL ones, while the MuLan tokens still matter; at rate 0 the tune does matter."""
    model = melody_stage(condition_dropout=(("melody_tokens", 1.0),))
    params = unbox(model.get_initial_variables(jax.random.PRNGKey(0), {k: v.shape for k, v in stage_batch(0).items()}))[
        "params"
    ]
    loss = jax.jit(lambda p, b, r: model.loss_fn(p, b, r)[0])
    rng = jax.random.PRNGKey(3)
    a, b = stage_batch(0), stage_batch(0)
    b["melody_tokens"] = stage_batch(1)["melody_tokens"]
    null = dict(a, melody_tokens=np.full_like(a["melody_tokens"], NULL_CODE))
    assert float(loss(params, a, rng)) == float(loss(params, b, rng)) == float(loss(params, null, None))
    other_text = dict(a, mulan_tokens=stage_batch(2)["mulan_tokens"])
    assert float(loss(params, other_text, rng)) != float(loss(params, a, rng))
    kept = melody_stage(condition_dropout=(("melody_tokens", 0.0),))
    assert float(kept.loss_fn(params, a, rng)[0]) != float(kept.loss_fn(params, b, rng)[0])


def hummed(index: int, seconds: float, sample_rate: int = SR) -> np.ndarray:
    from musiclm_jax.data import melody, synthetic

    seed = synthetic.SPLIT_SEEDS["validation"]
    return melody.melody_group(seed, index, kinds=("hum",), sample_rate=sample_rate, duration_s=seconds)[0][0]


def test_melody_tokenizer_windows_any_tune_and_refuses_unusable_ones(melody_model_dirs):
    from musiclm_jax.tokenizers.melody import MelodyTokenizer, UnusableMelodyError

    tok = MelodyTokenizer.from_model_dir(melody_model_dirs["melody_dir"])
    assert tok.windows_per_second == 1 and tok.num_levels == 4
    a, b = tok.tokens([hummed(0, 3.0), hummed(1, 2.5)])
    assert a.shape == (3, 4) and b.shape == (3, 4) and a.dtype == np.int32  # a window starting in each second
    assert tok.tokens_for(hummed(0, 3.0), SR, 3.0).shape == (1, 3, 4)
    short = tok.tokens_for(hummed(0, 1.0, 22050), 22050, 3.5)  # another rate; looped to 3.5 s: 4 windows
    assert short.shape == (1, 4, 4)
    with pytest.raises(TypeError, match="audio only"):
        tok.text_tokens(["a calm tune"])
    with pytest.raises(UnusableMelodyError, match="silent"):
        tok.tokens_for(np.zeros(SR, np.float32), SR, 2.0)
    with pytest.raises(UnusableMelodyError, match="mono"):
        tok.tokens_for(np.zeros((2, SR), np.float32), SR, 2.0)
    with pytest.raises(UnusableMelodyError, match="NaN"):
        tok.tokens_for(np.full(SR, np.nan, np.float32), SR, 2.0)


def test_generation_follows_the_given_tune_and_runs_without_one(melody_model_dirs, musiclm_model_dirs, tmp_path):
    """The semantic stage reads the tune's tokens window by window: two tunes give two pieces under
    one seed and prompt; without a tune the stage gets NULL melody tokens. `generate --melody`
    records the tune and refuses what it cannot follow."""
    from musiclm_jax import generate as gen
    from musiclm_jax.audio.io import write_wav

    model = gen.load_musiclm(melody_model_dirs, windows={"semantic": (1.0, 0.6)})
    seen = []
    run_stage = model._run_stage
    model._run_stage = lambda stage, batch, *a: seen.append((stage, batch)) or run_stage(stage, batch, *a)
    kwargs = dict(seed=3, melody_sample_rate=SR)
    one = model.generate(["a calm tune"], 1.5, melody_audio=hummed(0, 2.0), **kwargs)
    two = model.generate(["a calm tune"], 1.5, melody_audio=hummed(1, 2.0), **kwargs)
    none = model.generate(["a calm tune"], 1.5, seed=3)
    assert one.audio.shape == none.audio.shape == (1, int(1.5 * model.codec.sample_rate))
    assert not np.array_equal(one.semantic_tokens, two.semantic_tokens)
    semantic = [b for stage, b in seen if stage == "semantic"]
    # semantic windows [0, 1) and [0.6, 1.52) s read the melody windows starting in them: [0] and [0, 1]
    assert [b["melody_tokens"].shape for b in semantic[:2]] == [(1, 1, 4), (1, 2, 4)]
    tune_tokens = model.melody.tokens_for(hummed(0, 2.0), SR, 1.5)
    np.testing.assert_array_equal(semantic[0]["melody_tokens"], tune_tokens[:, :1])
    np.testing.assert_array_equal(semantic[1]["melody_tokens"], tune_tokens[:, :2])
    assert all(np.all(b["melody_tokens"] == NULL_CODE) for b in semantic[-2:])

    write_wav(tmp_path / "hum.wav", hummed(0, 2.0), SR)
    write_wav(tmp_path / "silence.wav", 1e-3 * hummed(0, 1.0), SR)  # audible to a decoder, too quiet to follow
    common = dict(seconds=1.0, prompts=["a calm tune"], model_dirs=melody_model_dirs, model=model)
    [meta] = gen.generate(output_dir=str(tmp_path / "out"), melody=str(tmp_path / "hum.wav"), **common)
    assert meta["melody"].endswith("hum.wav")
    with pytest.raises(ValueError, match="silent"):
        gen.generate(output_dir=str(tmp_path / "none"), melody=str(tmp_path / "silence.wav"), **common)
    with pytest.raises(Exception, match="missing.wav"):
        gen.generate(output_dir=str(tmp_path / "none"), melody=str(tmp_path / "missing.wav"), **common)
    plain = gen.load_musiclm(musiclm_model_dirs)
    with pytest.raises(ValueError, match="trained without melody"):
        plain.generate(["a calm tune"], 1.0, melody_audio=hummed(0, 1.0), melody_sample_rate=SR)
    assert not (tmp_path / "none").exists()
    with pytest.raises(ValueError, match="needs the melody tokenizer"):
        gen.load_musiclm({k: v for k, v in melody_model_dirs.items() if k != "melody_dir"})
