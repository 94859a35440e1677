"""Compiled KV-cache decoding: cache == full forward pass, sampling filters, legal ranges, CFG."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from musiclm_jax.data.token_tasks import permuted_copy_batch
from musiclm_jax.models import decoding
from musiclm_jax.models.stages import StageConfig, StageModel
from musiclm_jax.models.token_layout import NULL_COND_ID, TokenLayout

TINY = dict(num_layers=2, num_heads=4, head_dim=16, d_model=64, d_ff=256, dropout_rate=0.0)
# Reduced vocabularies keep CPU runs fast. Acoustic levels get different codebook sizes so that a
# wrong level in the legal-range mask would show.
TASK_LAYOUT = TokenLayout(streams=(("mulan", 12, 32), ("semantic", 1, 64)))
TASK_CODEBOOK = 64
RAGGED_LAYOUT = TokenLayout(streams=(("mulan", 12, 16), ("semantic", 1, 16), ("acoustic", 12, (16, 8, 12, 5) * 3)))


def _init(model, shapes, seed=0):
    params = jax.jit(lambda rng: model.get_initial_variables(rng, shapes))(jax.random.key(seed))["params"]
    return nn.meta.unbox(params)


@pytest.fixture(scope="module")
def semantic_model():
    model = StageModel(StageConfig(**TINY, layout=TASK_LAYOUT))
    batch = {k: jnp.asarray(v) for k, v in permuted_copy_batch(0, 3, codebook_size=TASK_CODEBOOK).items()}
    params = _init(model, {k: v.shape for k, v in batch.items()})
    return model, params, batch


@pytest.fixture(scope="module")
def coarse_model():
    model = StageModel(
        StageConfig(
            **TINY,
            layout=RAGGED_LAYOUT,
            conditions=(("mulan_tokens", "mulan", 0, 12), ("semantic_tokens", "semantic", 0, 1)),
            target=("acoustic_tokens", "acoustic", 0, 4),
        )
    )
    rng = np.random.default_rng(1)
    batch = {
        "mulan_tokens": jnp.asarray(rng.integers(0, 16, (2, 12)), jnp.int32),
        "semantic_tokens": jnp.asarray(rng.integers(0, 16, (2, 4)), jnp.int32),
    }
    params = _init(model, {**{k: v.shape for k, v in batch.items()}, "acoustic_tokens": (2, 5, 4)}, seed=1)
    return model, params, batch


@pytest.mark.parametrize(
    "scan_layers,unroll,prefill,extra",
    [
        (True, True, 20, {}),
        (True, False, 1, {}),
        (False, True, 13, {}),
        (True, True, 13, {"num_kv_heads": 2}),
        (True, True, 13, {"position": "rope", "attention_kernel": "fused"}),
    ],
    ids=["scanned-unrolled-for-decode", "scanned-stacked-cache", "unscanned", "grouped-query", "rope-fused"],
)
def test_cache_matches_full_forward(scan_layers, unroll, prefill, extra):
    model = StageModel(StageConfig(**TINY, layout=TASK_LAYOUT, scan_layers=scan_layers, **extra))
    batch = {k: jnp.asarray(v) for k, v in permuted_copy_batch(5, 2, codebook_size=TASK_CODEBOOK).items()}
    params = _init(model, {k: v.shape for k, v in batch.items()})
    inputs = model.build_sequences(batch)["inputs"]  # [2, 36]
    full = jax.jit(model.logits)(params, inputs)
    # 1: BOS only, then token by token; 13: the prompt (BOS + 12 MuLan) in one chunk;
    # 20: the prompt + a 7-token continuation prefix in one chunk, then token by token.
    cached = decoding.teacher_forced_logits(model.module, params, inputs, prefill, unroll_layers=unroll)
    assert cached.shape == full.shape
    np.testing.assert_allclose(cached, full, atol=1e-4, rtol=1e-4)


def test_grouped_query_attention_equals_heads_sharing_their_key_and_value():
    """num_kv_heads=1 (multi-query) = plain attention whose K/V kernels repeat one head: the
    grouping pairs query head h with K/V head h // (num_heads / num_kv_heads). Its KV cache and
    K/V kernels are num_heads times smaller."""
    batch = {k: jnp.asarray(v) for k, v in permuted_copy_batch(5, 2, codebook_size=TASK_CODEBOOK).items()}
    shapes = {k: v.shape for k, v in batch.items()}
    mqa = StageModel(StageConfig(**TINY, layout=TASK_LAYOUT, num_kv_heads=1))
    mha = StageModel(StageConfig(**TINY, layout=TASK_LAYOUT))
    params = _init(mqa, shapes)
    attention = params["layers"]["attention"]
    assert attention["key"].shape == (2, 64, 1, 16) and attention["query"].shape == (2, 64, 4, 16)
    repeated = {**attention, **{k: jnp.repeat(attention[k], 4, axis=2) for k in ("key", "value")}}
    mha_params = {**params, "layers": {**params["layers"], "attention": repeated}}
    inputs = mqa.build_sequences(batch)["inputs"]
    np.testing.assert_allclose(
        jax.jit(mqa.logits)(params, inputs), jax.jit(mha.logits)(mha_params, inputs), atol=1e-5, rtol=1e-5
    )
    cache = decoding.init_cache(mqa.module, 2, 36)
    assert cache["layers"]["attention"]["cached_key"].shape == (2, 2, 36, 1, 16)  # [layers, b, len, kv, d]
    with pytest.raises(ValueError, match="num_kv_heads must divide"):
        StageConfig(**TINY, layout=TASK_LAYOUT, num_kv_heads=3)


@pytest.mark.parametrize("position", ["relative_bias", "rope"])
def test_fused_attention_kernel_equals_xla_attention(position):
    """attention_kernel='fused' (jax.nn.dot_product_attention; cuDNN on GPU) gives the einsum
    path's loss and gradients, with the T5 bias as its additive bias or with rope's causal flag."""
    batch = {k: jnp.asarray(v) for k, v in permuted_copy_batch(5, 2, codebook_size=TASK_CODEBOOK).items()}
    models = {
        k: StageModel(StageConfig(**TINY, layout=TASK_LAYOUT, position=position, attention_kernel=k, num_kv_heads=2))
        for k in ("xla", "fused")
    }
    params = _init(models["xla"], {k: v.shape for k, v in batch.items()})
    results = {
        k: jax.jit(jax.value_and_grad(lambda p, m=m: m.loss_fn(p, batch, None)[0]))(params) for k, m in models.items()
    }
    np.testing.assert_allclose(results["fused"][0], results["xla"][0], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(results["fused"][1]), jax.tree.leaves(results["xla"][1])):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4)
    assert ("relpos_bias" in params) == (position == "relative_bias")


_JIT_LOGITS = {}


def _sequence_logits(model, params, prompt, ids):
    """Full-forward logits predicting each of `ids` after `prompt` (both global ids)."""
    inputs = jnp.concatenate([prompt, ids[:, :-1]], axis=1)
    logits_fn = _JIT_LOGITS.setdefault(id(model), jax.jit(model.logits))
    return logits_fn(params, inputs)[:, prompt.shape[1] - 1 :]


def _legal_ranges(model):
    spec = model.config.target
    lo, hi = model.layout.level_ranges(spec.stream, spec.first_level, spec.num_levels)
    return tuple(int(x) for x in lo), tuple(int(x) for x in hi)


@pytest.mark.parametrize("prefix_len", [0, 5])
def test_generate_loop_logits_match_full_forward(semantic_model, prefix_len):
    model, params, batch = semantic_model
    if prefix_len:
        batch = {**batch, "semantic_tokens": batch["semantic_tokens"][:, :prefix_len]}
    else:
        batch = {"mulan_tokens": batch["mulan_tokens"]}
    prompt = model.prompt_ids(batch)
    assert prompt.shape == (3, 1 + 12 + prefix_len)
    lo, hi = _legal_ranges(model)
    ids, logits = decoding.generate(
        model.module,
        params,
        prompt,
        jax.random.key(0),
        num_steps=24 - prefix_len,
        level_lo=lo,
        level_hi=hi,
        start_position=prefix_len,
        temperature=1.0,
        return_logits=True,
    )
    full = _sequence_logits(model, params, prompt, ids)
    legal = np.isfinite(np.asarray(logits))
    assert legal.sum(-1).tolist() == [[64] * (24 - prefix_len)] * 3  # only the semantic codebook
    np.testing.assert_allclose(np.asarray(logits)[legal], np.asarray(full)[legal], atol=1e-4, rtol=1e-4)
    if prefix_len:
        # predict_batch returns the prefix followed by the same samples, as raw codes.
        codes = model.predict_batch(params, batch, jax.random.key(0), num_target_tokens=24)
        assert codes.shape == (3, 24)
        np.testing.assert_array_equal(codes[:, :prefix_len], batch["semantic_tokens"])
        np.testing.assert_array_equal(codes[:, prefix_len:], ids - model.layout.offset("semantic", 0))


def test_top_k_1_equals_greedy(semantic_model):
    model, params, batch = semantic_model
    batch = {"mulan_tokens": batch["mulan_tokens"]}
    greedy = model.predict_batch(params, batch, num_target_tokens=24, temperature=0.0)
    top1 = model.predict_batch(params, batch, jax.random.key(7), num_target_tokens=24, temperature=1.3, top_k=1)
    np.testing.assert_array_equal(top1, greedy)
    # Greedy = argmax of the full forward pass at every step (restricted to the target range).
    prompt = model.prompt_ids(batch)
    ids = greedy + model.layout.offset("semantic", 0)
    full = np.asarray(_sequence_logits(model, params, prompt, ids))
    lo = model.layout.offset("semantic", 0)
    np.testing.assert_array_equal(np.argmax(full[..., lo : lo + 64], axis=-1), greedy)
    # Plain sampling differs from greedy (untrained model: high-entropy logits).
    sampled = model.predict_batch(params, batch, jax.random.key(7), num_target_tokens=24, temperature=1.0)
    assert np.mean(np.asarray(sampled) != np.asarray(greedy)) > 0.5


def test_kth_largest_equals_top_k_with_ties_infinities_and_signed_zeros():
    rng = np.random.default_rng(0)
    rows = [
        rng.normal(size=1028),
        np.round(rng.normal(size=1028) * 2),  # many ties
        np.concatenate([np.full(1000, -np.inf), rng.normal(size=28)]),
        np.array([0.0, -0.0, -1.0, 2.0, -0.0, 0.0]),
    ]
    bisect = jax.jit(decoding._kth_largest_by_bisection, static_argnums=1)  # the CPU path on any backend
    public = jax.jit(decoding.kth_largest, static_argnums=1)
    for row in rows:
        x = jnp.asarray(np.stack([row, -row]), jnp.float32)
        for k in sorted({1, 2, 5, 102, len(row) // 2, len(row)} & set(range(1, len(row) + 1))):
            want = np.asarray(jax.lax.top_k(x, k)[0][..., -1:])
            for fn in (bisect, public):  # bit for bit: signed zeros too
                np.testing.assert_array_equal(
                    np.asarray(fn(x, k)).view(np.uint32), want.view(np.uint32), err_msg=f"k={k}"
                )
            many = jnp.tile(x, (3, 1))  # past the small-input size: the 1-bit-per-round search
            assert many.size > decoding._SMALL_TOP_K_INPUT or len(row) < 1000
            np.testing.assert_array_equal(
                np.asarray(bisect(many, k)).view(np.uint32), np.tile(want, (3, 1)).view(np.uint32)
            )
    x = jnp.asarray(rng.normal(size=(2, 3, 50)), jnp.bfloat16)  # any leading shape and float dtype
    np.testing.assert_array_equal(decoding._kth_largest_by_bisection(x, 7), jax.lax.top_k(x, 7)[0][..., -1:])
    # An exported sampler has a symbolic batch: the search must not compare it with a constant.
    (rows,) = jax.export.symbolic_shape("b")
    spec = jax.ShapeDtypeStruct((rows, 16), jnp.float32)
    exported = jax.export.export(jax.jit(lambda v: decoding.kth_largest(v, 3)), platforms=("cpu",))(spec)
    y = jnp.asarray(rng.normal(size=(5, 16)), jnp.float32)
    np.testing.assert_array_equal(exported.call(y), jax.lax.top_k(y, 3)[0][..., -1:])


def test_filter_logits_top_k_top_p():
    logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05], [0.05, 0.15, 0.3, 0.5]]))
    kept = np.isfinite(np.asarray(decoding.filter_logits(logits, top_k=2)))
    np.testing.assert_array_equal(kept, [[1, 1, 0, 0], [0, 0, 1, 1]])
    kept = np.isfinite(np.asarray(decoding.filter_logits(logits, top_p=0.7)))
    np.testing.assert_array_equal(kept, [[1, 1, 0, 0], [0, 0, 1, 1]])
    kept = np.isfinite(np.asarray(decoding.filter_logits(logits, top_p=0.85)))
    np.testing.assert_array_equal(kept, [[1, 1, 1, 0], [0, 1, 1, 1]])
    kept = np.isfinite(np.asarray(decoding.filter_logits(logits, top_p=0.1)))  # always >= 1 token
    np.testing.assert_array_equal(kept, [[1, 0, 0, 0], [0, 0, 0, 1]])
    # Samples only ever come from the kept set.
    draws = jax.jit(jax.vmap(lambda k: decoding.sample_logits(logits, k, top_p=0.7)))(
        jax.random.split(jax.random.key(0), 200)
    )
    assert set(np.asarray(draws)[:, 0].tolist()) == {0, 1}
    assert set(np.asarray(draws)[:, 1].tolist()) == {2, 3}


def test_samples_lie_in_the_target_levels_range(coarse_model):
    model, params, batch = coarse_model
    frames = 5
    level = np.arange(frames * 4) % 4
    sizes = np.array([16, 8, 12, 5])[level]  # per-level codebook sizes of RAGGED_LAYOUT
    # Continuation from 1.5 frames (6 codes): sampling starts at level 2 and cycles through all
    # four levels. to_codes maps an id outside its position's level range to -1, so codes in
    # [0, size) mean every sampled id was legal.
    prefix = jnp.asarray(np.array([[1, 2, 3, 4, 5, 1], [0, 7, 11, 4, 15, 0]]), jnp.int32)
    codes = model.predict_batch(
        params,
        {**batch, "acoustic_tokens": prefix},
        jax.random.key(3),
        num_target_tokens=frames * 4,
        num_samples=3,
        temperature=2.0,
        top_k=10,
        top_p=0.95,
    )
    codes = np.asarray(codes)
    assert codes.shape == (6, frames * 4)
    np.testing.assert_array_equal(codes[:, :6], np.repeat(np.asarray(prefix), 3, axis=0))
    assert np.all((codes >= 0) & (codes < sizes))
    assert len({tuple(r) for r in codes[:3, 6:]}) > 1  # really sampling: candidates differ


def test_guidance_scale_zero_equals_unguided_and_cfg_formula(coarse_model):
    model, params, batch = coarse_model
    lo, hi = _legal_ranges(model)
    prompt = model.prompt_ids(batch)
    uncond = model.prompt_ids(batch, null_condition=True)
    assert np.all(np.asarray(uncond[:, 1:]) == NULL_COND_ID)  # MuLan + semantic conditions nulled
    kwargs = dict(num_steps=12, level_lo=lo, level_hi=hi, temperature=1.0, return_logits=True)
    ids_plain, logits_plain = decoding.generate(model.module, params, prompt, jax.random.key(5), **kwargs)
    ids_one, logits_one = decoding.generate(
        model.module, params, prompt, jax.random.key(5), guidance_scale=0.0, uncond_prompt=uncond, **kwargs
    )
    np.testing.assert_array_equal(ids_one, ids_plain)
    np.testing.assert_allclose(logits_one, logits_plain, atol=1e-5)

    scale = 3.0
    ids_cfg, logits_cfg = decoding.generate(
        model.module, params, prompt, jax.random.key(5), guidance_scale=scale, uncond_prompt=uncond, **kwargs
    )
    cond = np.asarray(_sequence_logits(model, params, prompt, ids_cfg))
    free = np.asarray(_sequence_logits(model, params, uncond, ids_cfg))
    expected = cond + scale * (cond - free)
    legal = np.isfinite(np.asarray(logits_cfg))
    np.testing.assert_allclose(np.asarray(logits_cfg)[legal], expected[legal], atol=1e-3, rtol=1e-4)
    assert not np.allclose(np.asarray(logits_cfg)[legal], cond[legal], atol=1e-2)


def test_num_samples_rows_follow_their_prompt(semantic_model):
    model, params, batch = semantic_model
    batch = {"mulan_tokens": batch["mulan_tokens"]}
    greedy = np.asarray(model.predict_batch(params, batch, num_target_tokens=24, temperature=0.0))
    many = np.asarray(model.predict_batch(params, batch, num_target_tokens=24, temperature=0.0, num_samples=4))
    assert many.shape == (12, 24)
    np.testing.assert_array_equal(many, np.repeat(greedy, 4, axis=0))
    sampled = np.asarray(model.predict_batch(params, batch, jax.random.key(1), num_target_tokens=24, num_samples=4))
    assert len({tuple(r) for r in sampled[:4]}) > 1  # candidates of one prompt differ


def test_prefix_longer_than_target_is_an_error(semantic_model):
    model, params, batch = semantic_model
    with pytest.raises(ValueError, match="num_target_tokens"):
        model.predict_batch(params, batch, num_target_tokens=10)


@pytest.fixture(scope="module")
def trained_copy_model():
    """The tiny stage trained on permuted_copy (about 10 s on 2 CPU cores)."""
    steps, batch_size = 400, 16
    model = StageModel(StageConfig(**TINY, layout=TASK_LAYOUT, cond_dropout_rate=0.1))
    pool = permuted_copy_batch(0, 4096, codebook_size=TASK_CODEBOOK)
    params = _init(model, {k: (batch_size, v.shape[1]) for k, v in pool.items()})
    optimizer = optax.adamw(optax.warmup_cosine_decay_schedule(0.0, 1e-2, 50, steps, 1e-3), weight_decay=0.01)
    opt_state = optimizer.init(params)

    @jax.jit
    def step(params, opt_state, batch, rng):
        grads = jax.grad(lambda p: model.loss_fn(p, batch, rng)[0])(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    order = np.random.default_rng(0)
    for i in range(steps):
        idx = order.integers(0, 4096, batch_size)
        params, opt_state = step(
            params, opt_state, {k: jnp.asarray(v[idx]) for k, v in pool.items()}, jax.random.key(i)
        )
    return model, params


def test_trained_model_decodes_permuted_copy(trained_copy_model):
    model, params = trained_copy_model
    held_out = {
        k: jnp.asarray(v) for k, v in permuted_copy_batch(0, 64, split="eval", codebook_size=TASK_CODEBOOK).items()
    }
    codes = model.predict_batch(
        params, {"mulan_tokens": held_out["mulan_tokens"]}, num_target_tokens=24, temperature=0.0
    )
    assert np.mean(np.asarray(codes) == np.asarray(held_out["semantic_tokens"])) > 0.95
    # Continuation: the first 12 targets given, the model continues the period.
    cont = model.predict_batch(
        params,
        {**held_out, "semantic_tokens": held_out["semantic_tokens"][:, :12]},
        num_target_tokens=24,
        temperature=0.0,
    )
    np.testing.assert_array_equal(cont[:, :12], held_out["semantic_tokens"][:, :12])
    assert np.mean(np.asarray(cont) == np.asarray(held_out["semantic_tokens"])) > 0.95


def test_splash_attention_equals_causal_attention_on_one_device_and_under_a_mesh():
    """The TPU path of the fused causal kernel (Pallas splash attention, run here in Pallas'
    interpreter): equal to causal attention in output and gradient, with grouped K/V heads and a
    length that is no multiple of the kernel's blocks; under an 8-device mesh it runs per device
    through shard_map over the batch ('data', 'fsdp') and heads ('model') axes."""
    from musiclm_jax.nn.splash import splash_causal_attention
    from musiclm_jax.training.partitioning import Partitioner

    rng = np.random.default_rng(0)
    q = jnp.asarray(rng.standard_normal((4, 200, 4, 64)), jnp.float32) * 0.125
    k, v = (jnp.asarray(rng.standard_normal((4, 200, 2, 64)), jnp.float32) for _ in range(2))

    def reference(q, k, v):
        return jax.nn.dot_product_attention(q, k, v, scale=1.0, is_causal=True)

    def splash(q, k, v):
        return splash_causal_attention(q, k, v, interpret=True)

    expected = reference(q, k, v)
    np.testing.assert_allclose(jax.jit(splash)(q, k, v), expected, atol=2e-5)
    grads = [jax.grad(lambda q, f=f: jnp.sum(f(q, k, v) * expected))(q) for f in (splash, reference)]
    np.testing.assert_allclose(grads[0], grads[1], atol=2e-4)

    partitioner = Partitioner(ici_mesh_shape=(2, 2, 2), devices=jax.devices()[:8])
    with jax.set_mesh(partitioner.mesh), partitioner.rules_context():
        sharded = jax.jit(splash)(q, k, v)
    np.testing.assert_allclose(sharded, expected, atol=2e-5)
