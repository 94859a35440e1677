"""Residual vector quantizer: reconstruction, EMA, dead-code restart, dropout, k-means, jit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from musiclm_jax.nn import quantizer as rvq


def _codebooks(embed):
    embed = jnp.asarray(embed, jnp.float32)
    return {
        "embed": embed,
        "cluster_size": jnp.ones(embed.shape[:2], jnp.float32),
        "embed_sum": embed,
        "initialized": jnp.ones((), jnp.float32),
    }


def _two_scale(seed=0, levels=4, k=8, d=6):
    """Codebooks whose level l has scale 10**-l, and inputs that are exact sums of codes."""
    rs = np.random.RandomState(seed)
    embed = np.stack([rs.randn(k, d) * 10.0 ** (-lvl) for lvl in range(levels)]).astype(np.float32)
    codes = rs.randint(0, k, size=(3, 5, levels))
    x = sum(embed[lvl][codes[..., lvl]] for lvl in range(levels)).astype(np.float32)
    return _codebooks(embed), x, codes


def test_init_codebooks_shapes():
    cb = rvq.init_codebooks(jax.random.PRNGKey(0), 3, 16, 4)
    assert cb["embed"].shape == (3, 16, 4) and cb["embed"].dtype == jnp.float32
    assert cb["cluster_size"].shape == (3, 16) and np.all(np.asarray(cb["cluster_size"]) == 1)
    np.testing.assert_array_equal(cb["embed_sum"], cb["embed"])
    assert float(cb["initialized"]) == 0.0
    assert 0 < float(jnp.std(cb["embed"])) < 0.1


def test_exact_reconstruction_level0_holds_inputs():
    x = np.random.RandomState(1).randn(10, 4).astype(np.float32)
    embed = np.zeros((3, 10, 4), np.float32)
    embed[0] = x
    cb = _codebooks(embed)
    codes = rvq.encode(cb, x)
    np.testing.assert_array_equal(codes[:, 0], np.arange(10))
    np.testing.assert_allclose(rvq.decode(cb, codes), x, atol=1e-6)
    out = rvq.quantize(cb, x)
    np.testing.assert_allclose(out.quantized, x, atol=1e-6)
    assert float(out.commit_loss) < 1e-10


def test_exact_reconstruction_multi_level():
    cb, x, codes = _two_scale()
    enc = rvq.encode(cb, x)
    assert enc.shape == (3, 5, 4) and enc.dtype == jnp.int32
    np.testing.assert_array_equal(enc, codes)
    np.testing.assert_allclose(rvq.decode(cb, enc), x, atol=1e-5)
    out = rvq.quantize(cb, x)
    np.testing.assert_array_equal(out.codes, codes)
    np.testing.assert_allclose(out.quantized, x, atol=1e-5)
    np.testing.assert_array_equal(out.level_mask, np.ones(4))
    # Each level's counts are the histogram of its codes; sums are the summed residuals.
    for lvl in range(4):
        np.testing.assert_array_equal(out.counts[lvl], np.bincount(codes[..., lvl].ravel(), minlength=8))
    assert float(out.commit_loss) > 0
    # Prefix encode / decode gives the coarser reconstruction.
    enc2 = rvq.encode(cb, x, num_levels=2)
    np.testing.assert_array_equal(enc2, codes[..., :2])
    np.testing.assert_allclose(rvq.decode(cb, enc2), x - _levels_sum(cb, codes, 2, 4), atol=1e-5)


def _levels_sum(cb, codes, lo, hi):
    embed = np.asarray(cb["embed"])
    return sum(embed[lvl][codes[..., lvl]] for lvl in range(lo, hi))


def test_ema_update_matches_numpy():
    rs = np.random.RandomState(2)
    L, K, D = 3, 5, 4
    cs = rs.rand(L, K).astype(np.float32) + 0.5
    es = rs.randn(L, K, D).astype(np.float32)
    cb = {
        "embed": jnp.asarray(rs.randn(L, K, D), jnp.float32),
        "cluster_size": jnp.asarray(cs),
        "embed_sum": jnp.asarray(es),
        "initialized": jnp.ones(()),
    }
    counts = rs.randint(0, 4, size=(L, K)).astype(np.float32)
    counts[2] = 0  # an inactive level: must not change
    sums = rs.randn(L, K, D).astype(np.float32)
    sums[2] = 0
    decay, eps = 0.9, 1e-3
    new = rvq.ema_update(cb, jnp.asarray(counts), jnp.asarray(sums), decay=decay, eps=eps)
    for lvl in range(2):
        c = decay * cs[lvl] + (1 - decay) * counts[lvl]
        e = decay * es[lvl] + (1 - decay) * sums[lvl]
        n = c.sum()
        smoothed = (c + eps) / (n + K * eps) * n
        np.testing.assert_allclose(new["cluster_size"][lvl], c, rtol=1e-6)
        np.testing.assert_allclose(new["embed_sum"][lvl], e, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(new["embed"][lvl], e / smoothed[:, None], rtol=1e-5, atol=1e-6)
    for name in ("cluster_size", "embed_sum", "embed"):
        np.testing.assert_array_equal(new[name][2], cb[name][2])


def test_dead_codes_restarted():
    rs = np.random.RandomState(3)
    D = 3
    centers = rs.randn(4, D).astype(np.float32) * 3
    embed = np.concatenate([centers, np.full((4, D), 100.0, np.float32)])  # codes 4..7 far away
    cb = _codebooks(embed[None])
    x = (centers[rs.randint(0, 4, 64)] + 0.05 * rs.randn(64, D)).astype(np.float32)
    update = jax.jit(
        lambda cb, k: (lambda o: (rvq.ema_update(cb, o.counts, o.sums, decay=0.5), o.samples))(
            rvq.quantize(cb, x, rng=k)
        )
    )
    for step in range(4):
        cb, samples = update(cb, jax.random.PRNGKey(step))
    cs = np.asarray(cb["cluster_size"][0])
    assert np.all(cs[4:] < 1.0) and np.all(cs[:4] > 1.0)
    new, dead = rvq.restart_dead_codes(cb, samples, jax.random.PRNGKey(9), threshold=1.0)
    np.testing.assert_array_equal(dead, [4])
    new_embed = np.asarray(new["embed"][0])
    np.testing.assert_array_equal(new_embed[:4], np.asarray(cb["embed"][0])[:4])  # live codes untouched
    restarted = new_embed[4:]
    # every restarted code is one of the sampled (data) vectors, and they are distinct
    d = ((restarted[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    assert np.all(d.min(axis=1) < 1e-10)
    samp = np.asarray(samples[0])
    assert np.all(((restarted[:, None, :] - samp[None]) ** 2).sum(-1).min(axis=1) < 1e-10)
    assert len({tuple(r) for r in restarted}) == 4
    np.testing.assert_array_equal(new["cluster_size"][0, 4:], np.ones(4))
    np.testing.assert_allclose(new["embed_sum"][0, 4:], restarted * 1.0)
    np.testing.assert_array_equal(new["cluster_size"][0, :4], cs[:4])
    # and they are now used
    assert np.all(np.asarray(rvq.quantize(new, x).counts[0, 4:]).sum() > 0)


def test_quantizer_dropout():
    cb, x, codes = _two_scale(seed=4)
    out = rvq.quantize(cb, x, num_active_levels=2)
    np.testing.assert_array_equal(out.level_mask, [1, 1, 0, 0])
    np.testing.assert_allclose(out.quantized, rvq.decode(cb, codes[..., :2]), atol=1e-5)
    np.testing.assert_array_equal(out.codes, codes)  # inactive levels still report their codes
    assert np.all(np.asarray(out.counts[2:]) == 0) and np.all(np.asarray(out.sums[2:]) == 0)
    assert np.all(np.asarray(out.counts[:2]).sum(-1) == x.size // x.shape[-1])
    full = rvq.quantize(cb, x)
    assert float(out.commit_loss) > float(full.commit_loss)

    draws = jax.vmap(lambda k: rvq.quantizer_dropout_levels(k, 4))(jax.random.split(jax.random.PRNGKey(0), 400))
    assert draws.dtype == jnp.int32
    assert set(np.asarray(draws).tolist()) == {1, 2, 3, 4}


def test_straight_through_gradient():
    cb = rvq.init_codebooks(jax.random.PRNGKey(0), 3, 16, 5)
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 7, 5))
    g = jax.jit(jax.grad(lambda x: jnp.sum(rvq.quantize(cb, x, num_active_levels=2).quantized)))(x)
    np.testing.assert_array_equal(g, np.ones_like(x))
    # the commitment loss pulls x towards its quantization; codebooks get no gradient
    loss = lambda x, e: rvq.quantize({**cb, "embed": e}, x).commit_loss  # noqa: E731
    gx, gcb = jax.jit(jax.grad(loss, argnums=(0, 1)))(x, cb["embed"])
    assert float(jnp.abs(gx).sum()) > 0 and float(jnp.abs(gcb).sum()) == 0


def _planted(seed, k, d, per):
    rs = np.random.RandomState(seed)
    centers = (rs.randn(k, d) * 10).astype(np.float32)
    x = np.concatenate([c + 0.1 * rs.randn(per, d) for c in centers]).astype(np.float32)
    return centers, x[rs.permutation(len(x))]


def test_kmeans_init_planted_clusters():
    K, D = 8, 4
    centers, x = _planted(5, K, D, 64)
    cb = rvq.init_codebooks(jax.random.PRNGKey(0), 2, K, D)
    cb = jax.jit(rvq.kmeans_init)(cb, x.reshape(8, 64, D), jax.random.PRNGKey(1))
    assert float(cb["initialized"]) == 1.0
    np.testing.assert_array_equal(cb["cluster_size"], np.ones((2, K)))
    np.testing.assert_array_equal(cb["embed_sum"], cb["embed"])
    found = np.asarray(cb["embed"][0])
    d = np.sqrt(((centers[:, None] - found[None]) ** 2).sum(-1))
    assert np.all(d.min(axis=1) < 0.1)  # each planted centre has a centroid next to it
    out = rvq.quantize(cb, x, num_active_levels=1)
    assert float(jnp.mean((out.quantized - x) ** 2)) < 0.02  # ~ the noise variance 0.01
    assert float(out.perplexity[0]) > 0.99 * K  # equal-size clusters -> uniform usage
    out2 = rvq.quantize(cb, x)
    assert float(jnp.mean((out2.quantized - x) ** 2)) < float(jnp.mean((out.quantized - x) ** 2))


def test_kmeans_uniform_data_perplexity_and_small_batch():
    kmeans = jax.jit(rvq.kmeans_init)
    x = jax.random.uniform(jax.random.PRNGKey(2), (1024, 2))
    cb = kmeans(rvq.init_codebooks(jax.random.PRNGKey(0), 1, 16, 2), x, jax.random.PRNGKey(3))
    assert float(rvq.quantize(cb, x).perplexity[0]) > 0.9 * 16
    # fewer vectors than codes: sampled with replacement, still exact on the batch
    small = jax.random.normal(jax.random.PRNGKey(4), (5, 3))
    cb = kmeans(rvq.init_codebooks(jax.random.PRNGKey(0), 2, 16, 3), small, jax.random.PRNGKey(5))
    assert np.all(np.isfinite(np.asarray(cb["embed"])))
    np.testing.assert_allclose(rvq.quantize(cb, small).quantized, small, atol=1e-5)
    out = rvq.quantize(cb, small)
    assert out.samples.shape == (2, 5, 3)


def test_kmeans_init_if_needed():
    _, x = _planted(6, 4, 3, 16)
    cb = rvq.init_codebooks(jax.random.PRNGKey(0), 1, 4, 3)
    f = jax.jit(rvq.kmeans_init_if_needed)
    once = f(cb, x, jax.random.PRNGKey(1))
    assert float(once["initialized"]) == 1.0
    twice = f(once, x + 5.0, jax.random.PRNGKey(2))
    np.testing.assert_array_equal(twice["embed"], once["embed"])


def test_jit_with_traced_num_active_levels_and_bf16():
    cb, x, codes = _two_scale(seed=7)
    f = jax.jit(lambda cb, x, n, k: rvq.quantize(cb, x, num_active_levels=n, rng=k))
    for n in range(1, 5):
        out = f(cb, x, jnp.int32(n), jax.random.PRNGKey(0))
        ref = rvq.quantize(cb, x, num_active_levels=n, rng=jax.random.PRNGKey(0))
        np.testing.assert_allclose(out.quantized, ref.quantized, atol=1e-6)
        np.testing.assert_allclose(out.quantized, rvq.decode(cb, codes[..., :n]), atol=1e-5)
        np.testing.assert_array_equal(out.level_mask, (np.arange(4) < n).astype(np.float32))
        np.testing.assert_allclose(out.commit_loss, ref.commit_loss, rtol=1e-5)
        np.testing.assert_array_equal(out.samples, ref.samples)
    enc = jax.jit(rvq.encode, static_argnums=2)(cb, x, 3)
    np.testing.assert_array_equal(enc, codes[..., :3])
    np.testing.assert_allclose(jax.jit(rvq.decode)(cb, enc), rvq.decode(cb, codes[..., :3]), atol=1e-6)
    # bf16 input: float32 distance math, output in the input dtype
    xb = jnp.asarray(x, jnp.bfloat16)
    outb = rvq.quantize(cb, xb, num_active_levels=1)
    assert outb.quantized.dtype == jnp.bfloat16
    np.testing.assert_array_equal(outb.codes[..., 0], codes[..., 0])


def test_bad_dim_raises():
    cb = rvq.init_codebooks(jax.random.PRNGKey(0), 2, 4, 3)
    with pytest.raises(ValueError, match="last dim 5"):
        rvq.quantize(cb, jnp.zeros((2, 5)))
