"""Compiled autoregressive sampling with a KV cache (one XLA loop per call).

`generate` prefills the whole prompt (BOS, condition ids, optional continuation prefix) in
one chunked cache write, samples the first token from the prompt's last logits, then runs a
`jax.lax.scan` whose every step feeds the previous token (one cache write) and samples the
next one. The cache holds exactly prompt_len + num_steps - 1 positions (the last sampled
token is never fed back), i.e. the training sequence length for a stage.

Per-step cost: one single-token pass (all weights read once) plus attention of one query
against the cache, and O(vocab) work for the legal-range mask and sampling (the mask is built
per step from two scalars, never as a [steps, vocab] table). Three things keep the cache
traffic per step at "read K and V once" rather than "copy the whole cache":
  * layers are unrolled for decoding (`nn.transformer.unscanned`): one cache array per
    layer, updated in place by `dynamic_update_slice` in the loop carry. Through the
    scanned layers (`unroll_layers=False`) every step would slice each layer's cache out of
    the stacked [layers, ...] array and restack it;
  * a single-query step attends with a multiply-reduce over the cache in its stored
    [batch, len, heads, head_dim] layout (a batched dot would transpose the cache each step);
  * the prefill projects only the last prompt position to logits.
What still grows with the cache length is the attention read itself, small next to the
weight reads at paper sizes, so the cost per generated token stays nearly flat as the
generated length grows.

Classifier-free guidance runs the conditioned and NULL_COND-conditioned prompts as one
doubled batch [cond rows; uncond rows] that shares every step; the sampled token is fed to
both halves. Guided logits = cond + s * (cond - uncond) (Ho & Salimans' w: s = 0 is
unguided sampling and reproduces cond exactly; s = 2 is "3x" in the MusicGen convention).
"""

from __future__ import annotations

import functools
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from musiclm_jax.nn.transformer import unscanned, window_params


def init_cache(module: nn.Module, batch_size: int, length: int) -> Any:
    """A zero KV cache (the 'cache' collection) of `length` positions for `module`."""

    def make():
        ids = jnp.zeros((batch_size, length), jnp.int32)
        return module.init(jax.random.key(0), ids, decode=True, deterministic=True)["cache"]

    shapes = jax.eval_shape(make)  # no parameters or forward pass are computed
    return jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def decode_step(
    module: nn.Module,
    params: Any,
    cache: Any,
    ids: jax.Array,
    num_logits: Optional[int] = None,
    logits_window: Optional[tuple[int, int]] = None,
) -> tuple[jax.Array, Any]:
    """Feeds ids [B, L] (L >= 1) at the cache index: returns (logits [B, L, V], new cache);
    with `num_logits`, logits of the last `num_logits` positions only; with `logits_window`
    (lo, hi), of ids [lo, hi) only ([B, L, hi - lo])."""
    logits, mutated = module.apply(
        {"params": params, "cache": cache},
        ids,
        decode=True,
        deterministic=True,
        num_logits=num_logits,
        logits_window=logits_window,
        mutable=["cache"],
    )
    return logits, mutated["cache"]


@functools.partial(jax.jit, static_argnames=("module", "prefill_length", "unroll_layers"))
def teacher_forced_logits(
    module: nn.Module, params: Any, inputs: jax.Array, prefill_length: int, unroll_layers: bool = True
) -> jax.Array:
    """Logits [B, L, V] of decoding `inputs` [B, L] with the cache: the first `prefill_length`
    positions in one chunked write, then one position per scan step. Equals the full forward
    pass up to float rounding; exists to test the cache. `unroll_layers=False` decodes through
    the scanned layers (stacked cache) instead of the unrolled ones `generate` uses."""
    batch_size, length = inputs.shape
    if not 1 <= prefill_length <= length:
        raise ValueError(f"prefill_length must be in [1, {length}], got {prefill_length}")
    if unroll_layers:
        module, params = unscanned(module, params)
    cache = init_cache(module, batch_size, length)
    logits, cache = decode_step(module, params, cache, inputs[:, :prefill_length])
    if prefill_length == length:
        return logits

    def body(cache, token):
        step_logits, cache = decode_step(module, params, cache, token[:, None])
        return cache, step_logits[:, 0]

    _, rest = jax.lax.scan(body, cache, inputs[:, prefill_length:].T)
    return jnp.concatenate([logits, jnp.transpose(rest, (1, 0, 2))], axis=1)


_SIGN_BIT = np.uint32(0x80000000)
_SMALL_TOP_K_INPUT = 4096  # logits per step up to which the top-k search takes 4 bits per round


def _order_keys(x: jax.Array) -> jax.Array:
    """uint32 keys in the order of the float32 values (negative floats: all bits flipped)."""
    u = jax.lax.bitcast_convert_type(x, jnp.uint32)
    return jnp.where(u >= _SIGN_BIT, ~u, u | _SIGN_BIT)


def _from_order_keys(keys: jax.Array) -> jax.Array:
    u = jnp.where(keys >= _SIGN_BIT, keys ^ _SIGN_BIT, ~keys)
    return jax.lax.bitcast_convert_type(u, jnp.float32)


def _kth_largest_by_bisection(logits: jax.Array, k: int) -> jax.Array:
    """Builds the k-th largest order key from the top, `bits` bits per round: each round counts
    the keys at or above the 2**bits - 1 candidates prefix | j << shift and keeps the largest j
    whose count still reaches k. Small inputs (a decoding step at batch 1) take 4 bits per round,
    8 rounds of [rows, 15, vocab] comparisons, since there each round's cost is a few kernel
    launches; large ones take 1 bit per round (32 halvings), the fewest comparisons."""
    keys = _order_keys(logits.astype(jnp.float32))
    # A symbolic batch (an exported sampler) may be large: it takes the 1-bit search.
    static = all(isinstance(d, int) for d in keys.shape)
    bits = 4 if static and keys.size <= _SMALL_TOP_K_INPUT else 1
    digits = jnp.arange(1, 2**bits, dtype=jnp.uint32)

    def round_(r, prefix):  # invariant: the k-th largest key lies in [prefix, prefix | (2**shift - 1)]
        shift = (32 - bits * (r + 1)).astype(jnp.uint32)
        candidates = prefix | (digits << shift)  # [rows, 2**bits - 1]
        counts = jnp.sum(keys[..., None, :] >= candidates[..., :, None], axis=-1, dtype=jnp.int32)
        digit = jnp.sum(counts >= k, axis=-1, keepdims=True, dtype=jnp.uint32)  # counts fall with j
        return prefix | (digit << shift)

    prefix = jax.lax.fori_loop(0, 32 // bits, round_, jnp.zeros(keys.shape[:-1] + (1,), jnp.uint32))
    return _from_order_keys(prefix).astype(logits.dtype)


def kth_largest(logits: jax.Array, k: int) -> jax.Array:
    """The k-th largest value of each row, [..., 1], ties counted as `jax.lax.top_k` counts them.

    On CPU, XLA's TopK sorts every row: 0.9 ms per decoding step for 8 rows of 1,028 logits on
    2 cores. Searching the values' order-preserving uint32 keys from the top (4 bits per round
    for a few rows, 1 for many) finds the same value exactly. The choice is made per
    platform when lowering (an exported cpu + tpu sampler gets both); other platforms, and
    float64 logits (no exact 32-bit keys), keep TopK."""

    def top_k(x):
        return jax.lax.top_k(x, k)[0][..., -1:]

    if logits.dtype not in (jnp.float32, jnp.bfloat16, jnp.float16):
        return top_k(logits)
    return jax.lax.platform_dependent(logits, cpu=lambda x: _kth_largest_by_bisection(x, k), default=top_k)


def filter_logits(logits: jax.Array, *, top_k: int = 0, top_p: float = 1.0) -> jax.Array:
    """Sets logits outside the top-k / nucleus (top-p) set to -inf (k=0 / p=1: off)."""
    neg_inf = jnp.asarray(-jnp.inf, logits.dtype)
    if top_k > 0:
        kth = kth_largest(logits, min(int(top_k), logits.shape[-1]))
        logits = jnp.where(logits >= kth, logits, neg_inf)
    if top_p < 1.0:
        sorted_desc = jnp.flip(jnp.sort(logits, axis=-1), axis=-1)
        probs = jax.nn.softmax(sorted_desc, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        keep = mass_before < top_p  # always keeps the most likely token
        threshold = jnp.min(jnp.where(keep, sorted_desc, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits >= threshold, logits, neg_inf)
    return logits


def sample_logits(
    logits: jax.Array, rng: jax.Array, *, temperature: Any = 1.0, top_k: int = 0, top_p: float = 1.0
) -> jax.Array:
    """One id per row of logits [..., V]; temperature 0 is greedy argmax.

    `temperature` may be traced; `top_k` and `top_p` are static (they decide what is computed).
    """
    logits = logits.astype(jnp.float32)
    greedy = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    if isinstance(temperature, (int, float)) and temperature == 0:
        return greedy
    temperature = jnp.asarray(temperature, jnp.float32)
    positive = temperature > 0
    scaled = filter_logits(logits / jnp.where(positive, temperature, 1.0), top_k=top_k, top_p=top_p)
    sampled = jax.random.categorical(rng, scaled, axis=-1).astype(jnp.int32)
    return jnp.where(positive, sampled, greedy)


@functools.partial(
    jax.jit,
    static_argnames=(
        "module",
        "num_steps",
        "level_lo",
        "level_hi",
        "start_position",
        "top_k",
        "top_p",
        "return_logits",
        "unroll_layers",
    ),
)
def generate(
    module: nn.Module,
    params: Any,
    prompt: jax.Array,
    rng: jax.Array,
    *,
    num_steps: int,
    level_lo: tuple[int, ...],
    level_hi: tuple[int, ...],
    start_position: int = 0,
    temperature: Any = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    guidance_scale: Any = 0.0,
    uncond_prompt: Optional[jax.Array] = None,
    return_logits: bool = False,
    unroll_layers: bool = True,
):
    """Samples `num_steps` ids after `prompt` [B, P] (global ids, BOS first).

    Target position t = start_position + step has level j = t % len(level_lo) and may only
    take ids in [level_lo[j], level_hi[j]). The sampling key of position t is
    fold_in(rng, t), so results do not depend on how the loop is cut.
    With `uncond_prompt` [B, P] (same length), classifier-free guidance with
    `guidance_scale` runs both as one doubled batch (without it, `guidance_scale` is unused).
    `temperature` (0 = greedy) and `guidance_scale` are traced: changing them does not
    recompile; `top_k`, `top_p`, shapes and `num_steps` are static.
    `unroll_layers` (default) decodes through unrolled layers with one cache array per layer
    (see `nn.transformer.unscanned`); False keeps scanned layers and a stacked cache, which
    compiles faster but copies the whole cache every step.

    Returns ids [B, num_steps] (int32), and with `return_logits` also the guided, masked,
    pre-temperature logits [B, num_steps, V] the tokens were sampled from.
    """
    batch_size, prompt_len = prompt.shape
    if len(level_lo) != len(level_hi) or not level_lo:
        raise ValueError("level_lo and level_hi must be non-empty and of equal length")
    if num_steps < 0:
        raise ValueError(f"num_steps must be >= 0, got {num_steps}")
    guided = uncond_prompt is not None
    if guided and uncond_prompt.shape != prompt.shape:
        raise ValueError(f"uncond_prompt shape {uncond_prompt.shape} != prompt shape {prompt.shape}")
    if num_steps == 0:
        empty = jnp.zeros((batch_size, 0), jnp.int32)
        return (empty, jnp.zeros((batch_size, 0, module.config.vocab_size), jnp.float32)) if return_logits else empty

    if unroll_layers:
        module, params = unscanned(module, params)
    rows = jnp.concatenate([prompt, uncond_prompt], axis=0) if guided else prompt
    temperature = jnp.asarray(temperature, jnp.float32)
    guidance_scale = jnp.asarray(guidance_scale, jnp.float32)
    lo_table = jnp.asarray(level_lo, jnp.int32)
    hi_table = jnp.asarray(level_hi, jnp.int32)
    num_levels = len(level_lo)
    # Logits of the ids the levels span only: the rest of the vocabulary is never sampled. The
    # kernel's columns are cut once here, not in every step of the loop.
    window = (min(level_lo), max(level_hi))
    params = window_params(params, window)

    def pick(logits: jax.Array, step: jax.Array):
        logits = logits.astype(jnp.float32)
        if guided:
            cond, uncond = logits[:batch_size], logits[batch_size:]
            logits = cond + guidance_scale * (cond - uncond)
        position = start_position + step
        level = position % num_levels
        ids = window[0] + jnp.arange(logits.shape[-1], dtype=jnp.int32)
        legal = (ids >= lo_table[level]) & (ids < hi_table[level])
        logits = jnp.where(legal, logits, -jnp.inf)
        token = sample_logits(
            logits, jax.random.fold_in(rng, position), temperature=temperature, top_k=top_k, top_p=top_p
        )
        return token + window[0], logits

    def feed(token: jax.Array) -> jax.Array:
        return jnp.concatenate([token, token], axis=0) if guided else token

    cache = init_cache(module, rows.shape[0], prompt_len + num_steps - 1)
    prompt_logits, cache = decode_step(module, params, cache, rows, num_logits=1, logits_window=window)  # one write
    first, first_logits = pick(prompt_logits[:, -1], jnp.int32(0))

    def body(carry, step):
        cache, previous = carry
        logits, cache = decode_step(module, params, cache, feed(previous)[:, None], logits_window=window)
        token, masked = pick(logits[:, 0], step)
        return (cache, token), (token, masked if return_logits else None)

    _, (tokens, step_logits) = jax.lax.scan(body, (cache, first), jnp.arange(1, num_steps, dtype=jnp.int32))
    tokens = jnp.concatenate([first[:, None], tokens.T], axis=1)
    if not return_logits:
        return tokens
    all_logits = jnp.concatenate([first_logits[:, None], jnp.transpose(step_logits, (1, 0, 2))], axis=1)
    vocab_pad = ((0, 0), (0, 0), (window[0], module.config.vocab_size - window[1]))
    return tokens, jnp.pad(all_logits, vocab_pad, constant_values=-jnp.inf)
