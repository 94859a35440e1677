"""Residual vector quantization (RVQ) as pure JAX functions.

Used by SoundStream (acoustic tokens) and MuLan (MuLan tokens). The codebooks are not
trained by gradients: the train step updates them with an exponential moving average
(VQ-VAE / SoundStream rule), restarts dead codes from batch samples and initialises them
with k-means on the first batch. So the state is a plain dict of arrays, not flax params:

    embed         [L, K, D] float32  codebook vectors
    cluster_size  [L, K]    float32  EMA of assignment counts
    embed_sum     [L, K, D] float32  EMA of the sums of assigned vectors
    initialized   []        float32  0.0 until `kmeans_init` ran, then 1.0

A typical train step (sketch):

    cb = kmeans_init_if_needed(cb, x, rng_km)            # first batch only (lax.cond)
    n = quantizer_dropout_levels(rng_drop, L)             # quantizer dropout
    out = quantize(cb, x, num_active_levels=n, rng=rng_s)
    ... loss uses out.quantized and out.commit_loss ...
    cb = ema_update(cb, out.counts, out.sums, decay=0.99)
    cb, dead = restart_dead_codes(cb, out.samples, rng_r, threshold=1.0)

Level l always quantizes the residual left by levels 0..l-1 (codes of every level are
computed, even those beyond `num_active_levels`); inactive levels only drop out of the
output (`quantized`), the commitment loss and the EMA statistics. All distance math is
float32 (also for bf16 inputs) and written as |x|^2 - 2 x.e + |e|^2 with a matmul.
"""

from __future__ import annotations

from typing import Optional, Union

import flax
import jax
import jax.numpy as jnp

Array = jax.Array

_HIGHEST = jax.lax.Precision.HIGHEST


def init_codebooks(rng: Array, num_levels: int, codebook_size: int, dim: int) -> dict:
    """Fresh (not yet k-means initialised) codebooks: small random normal vectors."""
    embed = 0.01 * jax.random.normal(rng, (num_levels, codebook_size, dim), jnp.float32)
    return {
        "embed": embed,
        "cluster_size": jnp.ones((num_levels, codebook_size), jnp.float32),
        "embed_sum": embed,
        "initialized": jnp.zeros((), jnp.float32),
    }


@flax.struct.dataclass
class QuantizerOutput:
    quantized: Array  # [..., D] straight-through sum of the active levels' vectors, x.dtype
    codes: Array  # [..., L] int32 (all levels; see level_mask)
    level_mask: Array  # [L] float32, 1 for active levels
    commit_loss: Array  # [] mean over active levels of mean((sg(q_l) - residual_l)^2)
    counts: Array  # [L, K] float32 assignments per code in this batch (0 for inactive levels)
    sums: Array  # [L, K, D] float32 sums of the assigned residuals (0 for inactive levels)
    perplexity: Array  # [L] exp(entropy of the batch code usage), every level
    samples: Array  # [L, S, D] float32 residuals sampled from the batch, S = min(K, N)


def sq_distances(r: Array, e: Array) -> Array:
    """Squared L2 distances [N, K] between rows of r [N, D] and e [K, D] (float32)."""
    r2 = jnp.sum(r * r, axis=-1, keepdims=True)
    e2 = jnp.sum(e * e, axis=-1)
    return r2 - 2.0 * jnp.matmul(r, e.T, precision=_HIGHEST) + e2[None, :]


def nearest(r: Array, e: Array) -> Array:
    """Index [N] int32 of the nearest row of e [K, D] for each row of r [N, D]."""
    return jnp.argmin(sq_distances(r, e), axis=-1).astype(jnp.int32)


def _check(codebooks: dict, x: Array) -> None:
    d = codebooks["embed"].shape[-1]
    if x.shape[-1] != d:
        raise ValueError(f"quantizer input has last dim {x.shape[-1]}, codebooks have dim {d}")


def quantizer_dropout_levels(rng: Array, num_levels: int) -> Array:
    """Number of active levels for quantizer dropout: uniform int32 in [1, num_levels]."""
    return jax.random.randint(rng, (), 1, num_levels + 1, dtype=jnp.int32)


def quantize(
    codebooks: dict,
    x: Array,
    *,
    num_active_levels: Optional[Union[int, Array]] = None,
    rng: Optional[Array] = None,
) -> QuantizerOutput:
    """Residual-quantizes x [..., D] with the first `num_active_levels` levels (None = all).

    `num_active_levels` may be a traced int32 scalar (it is clipped to [1, L]). `rng` picks
    the dead-code restart `samples` (a fixed key when None).
    """
    _check(codebooks, x)
    embed = codebooks["embed"].astype(jnp.float32)
    num_levels, k, d = embed.shape
    lead = x.shape[:-1]
    xf = x.reshape(-1, d).astype(jnp.float32)
    n = xf.shape[0]
    if num_active_levels is None:
        num_active_levels = num_levels
    n_active = jnp.clip(jnp.asarray(num_active_levels, jnp.int32), 1, num_levels)
    level_mask = (jnp.arange(num_levels) < n_active).astype(jnp.float32)
    if rng is None:
        rng = jax.random.PRNGKey(0)
    num_samples = min(k, n)
    sample_keys = jax.random.split(rng, num_levels)

    # residual_l = x - sum_{j<l} q_j; the codebooks get no gradient, x gets it via commit_loss.
    residual = xf
    q_total = jnp.zeros_like(xf)
    codes, counts, sums, perplexity, samples, commit = [], [], [], [], [], []
    for level in range(num_levels):
        e = embed[level]
        r = jax.lax.stop_gradient(residual)
        code = nearest(r, e)
        q = jax.lax.stop_gradient(e[code])
        onehot = jax.nn.one_hot(code, k, dtype=jnp.float32)  # [N, K]
        count = jnp.sum(onehot, axis=0)
        probs = count / n
        perplexity.append(jnp.exp(-jnp.sum(probs * jnp.log(probs + 1e-10))))
        active = level_mask[level]
        counts.append(count * active)
        sums.append(jnp.matmul(onehot.T, r, precision=_HIGHEST) * active)
        commit.append(jnp.mean(jnp.square(q - residual)))
        idx = jax.random.permutation(sample_keys[level], n)[:num_samples]
        samples.append(r[idx])
        codes.append(code)
        q_total = q_total + active * q
        residual = residual - q

    # Straight-through estimator: forward value q_total, gradient identity wrt x.
    quantized = (xf + jax.lax.stop_gradient(q_total - xf)).astype(x.dtype)
    commit_loss = jnp.sum(jnp.stack(commit) * level_mask) / jnp.sum(level_mask)

    return QuantizerOutput(
        quantized=quantized.reshape(*lead, d),
        codes=jnp.stack(codes, axis=-1).reshape(*lead, num_levels),
        level_mask=level_mask,
        commit_loss=commit_loss,
        counts=jnp.stack(counts),
        sums=jnp.stack(sums),
        perplexity=jnp.stack(perplexity),
        samples=jnp.stack(samples),
    )


def encode(codebooks: dict, x: Array, num_levels: Optional[int] = None) -> Array:
    """Codes [..., n] int32 of the first n levels (n = num_levels or L; a static int)."""
    _check(codebooks, x)
    embed = codebooks["embed"].astype(jnp.float32)
    total, _, d = embed.shape
    n = total if num_levels is None else int(num_levels)
    if not 1 <= n <= total:
        raise ValueError(f"encode: num_levels={num_levels} outside [1, {total}]")
    lead = x.shape[:-1]
    residual = x.reshape(-1, d).astype(jnp.float32)
    codes = []
    for level in range(n):
        code = nearest(residual, embed[level])
        residual = residual - embed[level][code]
        codes.append(code)
    return jnp.stack(codes, axis=-1).reshape(*lead, n)


def decode(codebooks: dict, codes: Array) -> Array:
    """Sum over levels of the codes' vectors: codes [..., n] (n <= L) -> [..., D] float32."""
    embed = codebooks["embed"].astype(jnp.float32)
    n = codes.shape[-1]
    if n > embed.shape[0]:
        raise ValueError(f"decode: codes have {n} levels, codebooks only {embed.shape[0]}")
    out = jnp.zeros(codes.shape[:-1] + (embed.shape[-1],), jnp.float32)
    for level in range(n):
        out = out + jnp.take(embed[level], codes[..., level], axis=0)
    return out


def ema_update(codebooks: dict, counts: Array, sums: Array, *, decay: float = 0.99, eps: float = 1e-5) -> dict:
    """EMA codebook update (VQ-VAE / SoundStream) with Laplace smoothing of cluster sizes.

    Only levels with at least one assignment (counts.sum() > 0) change.
    """
    cs_old = codebooks["cluster_size"]
    es_old = codebooks["embed_sum"]
    k = cs_old.shape[-1]
    cs = decay * cs_old + (1.0 - decay) * counts
    es = decay * es_old + (1.0 - decay) * sums
    total = jnp.sum(cs, axis=-1, keepdims=True)
    smoothed = (cs + eps) / (total + k * eps) * total
    embed = es / smoothed[..., None]
    changed = jnp.sum(counts, axis=-1) > 0  # [L]
    return {
        **codebooks,
        "cluster_size": jnp.where(changed[:, None], cs, cs_old),
        "embed_sum": jnp.where(changed[:, None, None], es, es_old),
        "embed": jnp.where(changed[:, None, None], embed, codebooks["embed"]),
    }


def restart_dead_codes(codebooks: dict, samples: Array, rng: Array, *, threshold: float = 1.0):
    """Replaces codes with EMA cluster_size < threshold by random rows of `samples` [L, S, D].

    Within a level the replacement rows are distinct while S >= K. Returns (codebooks,
    dead_count [L] int32).
    """
    cs = codebooks["cluster_size"]
    num_levels, k = cs.shape
    s = samples.shape[1]
    dead = cs < threshold  # [L, K]
    perm = jnp.argsort(jax.random.uniform(rng, (num_levels, s)), axis=-1)  # a permutation per level
    idx = perm[:, jnp.arange(k) % s]  # [L, K]
    new = jnp.take_along_axis(samples.astype(jnp.float32), idx[..., None], axis=1)  # [L, K, D]
    return (
        {
            **codebooks,
            "embed": jnp.where(dead[..., None], new, codebooks["embed"]),
            "embed_sum": jnp.where(dead[..., None], new * threshold, codebooks["embed_sum"]),
            "cluster_size": jnp.where(dead, jnp.asarray(threshold, cs.dtype), cs),
        },
        jnp.sum(dead, axis=-1).astype(jnp.int32),
    )


def kmeans_plus_plus(points: Array, k: int, rng: Array, num_candidates: int = 1) -> Array:
    """k-means++ seeding with fixed shapes; samples with replacement once all points are taken.

    num_candidates > 1 is greedy k-means++ (as scikit-learn's): each step draws that many
    candidates and keeps the one that lowers the total squared distance most; plain k-means++
    often seeds two centroids in one cluster, which later Lloyd steps rarely undo.
    """
    n = points.shape[0]
    key0, key_loop = jax.random.split(rng)
    first = points[jax.random.randint(key0, (), 0, n)]
    centroids = jnp.zeros((k, points.shape[1]), jnp.float32).at[0].set(first)
    min_d = jnp.sum(jnp.square(points - first), axis=-1)

    def body(i, carry):
        centroids, min_d = carry
        key = jax.random.fold_in(key_loop, i)
        # log(0) = -inf gets no mass; if every distance is 0, all logits are equal (uniform).
        logits = jnp.log(jnp.maximum(min_d, 0.0) + 1e-30)
        if num_candidates == 1:
            c = points[jax.random.categorical(key, logits)]
            min_d = jnp.minimum(min_d, jnp.sum(jnp.square(points - c), axis=-1))
            return centroids.at[i].set(c), min_d
        cand = points[jax.random.categorical(key, logits, shape=(num_candidates,))]  # [C, D]
        d = jnp.minimum(min_d[:, None], jnp.maximum(sq_distances(points, cand), 0.0))  # [N, C]
        best = jnp.argmin(jnp.sum(d, axis=0))
        return centroids.at[i].set(cand[best]), d[:, best]

    centroids, _ = jax.lax.fori_loop(1, k, body, (centroids, min_d))
    return centroids


def lloyd(points: Array, centroids: Array, iters: int) -> Array:
    """`iters` full-batch Lloyd steps (static int); a centroid without points stays put."""
    k = centroids.shape[0]

    def body(_, c):
        onehot = jax.nn.one_hot(nearest(points, c), k, dtype=jnp.float32)
        cnt = jnp.sum(onehot, axis=0)
        sums = jnp.matmul(onehot.T, points, precision=_HIGHEST)
        return jnp.where(cnt[:, None] > 0, sums / jnp.maximum(cnt, 1.0)[:, None], c)  # keep empty clusters

    return jax.lax.fori_loop(0, iters, body, centroids)


def kmeans_init(codebooks: dict, x: Array, rng: Array, *, iters: int = 10) -> dict:
    """Initialises every level by k-means (k-means++ seeding + Lloyd) on the batch residuals."""
    _check(codebooks, x)
    num_levels, k, d = codebooks["embed"].shape
    residual = x.reshape(-1, d).astype(jnp.float32)
    keys = jax.random.split(rng, num_levels)
    embeds = []
    for level in range(num_levels):
        c = lloyd(residual, kmeans_plus_plus(residual, k, keys[level]), iters)
        residual = residual - c[nearest(residual, c)]
        embeds.append(c)
    embed = jnp.stack(embeds)
    return {
        "embed": embed,
        "embed_sum": embed,
        "cluster_size": jnp.ones((num_levels, k), jnp.float32),
        "initialized": jnp.ones((), jnp.float32),
    }


def kmeans_init_if_needed(codebooks: dict, x: Array, rng: Array, *, iters: int = 10) -> dict:
    """`kmeans_init` when codebooks["initialized"] == 0, else the codebooks unchanged (lax.cond)."""
    return jax.lax.cond(
        codebooks["initialized"] > 0,
        lambda cb: {name: jnp.asarray(v) for name, v in cb.items()},
        lambda cb: kmeans_init(cb, x, rng, iters=iters),
        codebooks,
    )
