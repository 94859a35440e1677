"""The MusicLM token stages (semantic, coarse acoustic, fine acoustic) as one decoder-only LM.

A stage reads condition token streams and predicts one target stream. Each stream is a
`StreamSpec(feature, stream, first_level, num_levels)`: the batch feature holding RAW codes
(0 .. codebook_size - 1; negative = padding), the `TokenLayout` stream they belong to, and
which RVQ levels to use. Features are int32 arrays, [B, N] already flattened frame-major or
[B, frames, levels] (flattened here; an array with more levels than needed, e.g. all 12
acoustic levels, is sliced to [first_level, first_level + num_levels)).

    semantic stage  conditions (mulan_tokens, mulan, 0, 12)       target (semantic_tokens, semantic, 0, 1)
    coarse acoustic conditions mulan + (semantic_tokens, ...)     target (acoustic_tokens, acoustic, 0, 4)
    fine acoustic   conditions (acoustic_tokens, acoustic, 0, 4)  target (acoustic_tokens, acoustic, 4, 8)

Conditioning is a prefix (paper, section 3.3): sequence = [condition ids..., target ids...],
model input = [BOS] + sequence[:-1], and the loss is the token cross-entropy on target
positions only. For classifier-free guidance, training replaces an example's condition ids
by NULL_COND with probability `cond_dropout_rate` (only when a dropout rng is given), and the
unconditional prompt of guided sampling has the same ids nulled. `guided_conditions` picks
which condition features that is (default all): ('mulan_tokens',) on an acoustic stage guides
by the text alone, keeping the semantic tokens in both prompts.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from musiclm_jax.models import decoding
from musiclm_jax.models.base import BaseModel, Batch, Metrics, Variables
from musiclm_jax.models.token_layout import BOS_ID, NULL_COND_ID, TokenLayout
from musiclm_jax.nn import config_io
from musiclm_jax.nn.layers import NEG_INF
from musiclm_jax.nn.stack import RelPosStackConfig
from musiclm_jax.nn.transformer import DecoderStack, TransformerConfig, count_params


class StreamSpec(NamedTuple):
    """Which batch feature holds which stream's codes, and which RVQ levels to use."""

    feature: str
    stream: str
    first_level: int = 0
    num_levels: int = 1


# Key under which `predict_batch` also accepts a continuation prefix explicitly (needed when the
# target feature is also a condition feature, as in the fine acoustic stage).
TARGET_PREFIX_KEY = "target_prefix"


@dataclasses.dataclass(frozen=True)
class StageConfig(RelPosStackConfig):
    """A token stage: streams, transformer size (the fields of nn/stack.py's configs),
    regularisation. Defaults = paper semantic stage."""

    # The paper's sizes (the fields are RelPosStackConfig's).
    num_layers: int = 24
    num_heads: int = 16
    head_dim: int = 64
    d_model: int = 1024
    d_ff: int = 4096
    dropout_rate: float = 0.1
    layout: TokenLayout = TokenLayout()
    conditions: tuple = (StreamSpec("mulan_tokens", "mulan", 0, 12),)
    target: tuple = StreamSpec("semantic_tokens", "semantic", 0, 1)
    cond_dropout_rate: float = 0.1
    # Condition features that condition dropout and guidance null (empty = all).
    guided_conditions: tuple = ()
    # (feature, rate) pairs: that condition alone is nulled with its own probability, on top of
    # cond_dropout_rate (melody dropout: the same model then also makes music without a tune).
    condition_dropout: tuple = ()
    z_loss: float = 0.0

    def __post_init__(self):
        super().__post_init__()  # sizes, dtypes, dropout and remat policy
        conditions = tuple(StreamSpec(*c) for c in self.conditions)
        target = StreamSpec(*self.target)
        object.__setattr__(self, "conditions", conditions)
        object.__setattr__(self, "target", target)
        for spec in (*conditions, target):
            # Raises a clear error for an unknown stream or level span.
            self.layout.level_ranges(spec.stream, spec.first_level, spec.num_levels)
        object.__setattr__(self, "guided_conditions", tuple(self.guided_conditions))
        unknown = set(self.guided_conditions) - {c.feature for c in conditions}
        if unknown:
            raise ValueError(
                f"StageConfig.guided_conditions {sorted(unknown)} are not condition features "
                f"({[c.feature for c in conditions]})"
            )
        object.__setattr__(self, "condition_dropout", tuple((str(f), float(r)) for f, r in self.condition_dropout))
        for feature, rate in self.condition_dropout:
            if feature not in {c.feature for c in conditions}:
                raise ValueError(
                    f"StageConfig.condition_dropout names {feature!r}, not a condition feature "
                    f"({[c.feature for c in conditions]})"
                )
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"StageConfig.condition_dropout rate of {feature!r} must be in [0, 1], got {rate}")
        if not 0.0 <= self.cond_dropout_rate <= 1.0:
            raise ValueError(f"StageConfig.cond_dropout_rate must be in [0, 1], got {self.cond_dropout_rate}")
        if self.z_loss < 0:
            raise ValueError(f"StageConfig.z_loss must be >= 0, got {self.z_loss}")

    def to_dict(self) -> dict:
        return config_io.to_plain(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "StageConfig":
        """Inverse of `to_dict` (JSON lists back to the layout's and streams' tuples)."""
        d = dict(d)
        layout = dict(d["layout"])
        layout["streams"] = tuple(
            (name, levels, tuple(sizes) if isinstance(sizes, list) else sizes)
            for name, levels, sizes in layout["streams"]
        )
        d["layout"] = TokenLayout(**layout)
        d["conditions"] = tuple(StreamSpec(*c) for c in d["conditions"])
        d["target"] = StreamSpec(*d["target"])
        d["condition_dropout"] = tuple(tuple(x) for x in d.get("condition_dropout", ()))
        return cls(**d)

    def transformer_config(self) -> TransformerConfig:
        sizes = {f.name: getattr(self, f.name) for f in dataclasses.fields(RelPosStackConfig)}
        return TransformerConfig(vocab_size=self.layout.vocab_size, **sizes)


def _flat_length(shape: Sequence[int], spec: StreamSpec) -> int:
    """Number of flattened tokens a feature of `shape` contributes."""
    if len(shape) == 2:
        return int(shape[1])
    if len(shape) == 3:
        if shape[2] != spec.num_levels and shape[2] < spec.first_level + spec.num_levels:
            raise ValueError(
                f"feature {spec.feature!r} of shape {tuple(shape)} lacks levels "
                f"[{spec.first_level}, {spec.first_level + spec.num_levels})"
            )
        return int(shape[1]) * spec.num_levels
    raise ValueError(f"feature {spec.feature!r} must be [B, N] or [B, frames, levels], got shape {tuple(shape)}")


class StageModel(BaseModel):
    """Decoder-only LM over [conditions..., target...] in one shared vocabulary."""

    def __init__(self, config: StageConfig = StageConfig()):
        self.config = config
        self.layout = config.layout
        self.module = DecoderStack(config.transformer_config())
        specs = (*config.conditions, config.target)
        self.FEATURE_DTYPES = {spec.feature: jnp.int32 for spec in specs}

    def config_dict(self) -> dict:
        return {"model": "StageModel", "config": self.config.to_dict()}

    # --- sequences ---------------------------------------------------------------------------

    def _feature(self, batch: Batch, spec: StreamSpec) -> jax.Array:
        if spec.feature not in batch:
            raise KeyError(f"batch lacks feature {spec.feature!r} (has {sorted(batch)})")
        return self.layout.flatten(batch[spec.feature], spec.stream, spec.first_level, spec.num_levels)

    def condition_ids(self, batch: Batch) -> jax.Array:
        """[B, C] global ids of all condition streams, concatenated in config order."""
        parts = [
            self.layout.to_ids(self._feature(batch, s), s.stream, s.first_level, s.num_levels)
            for s in self.config.conditions
        ]
        return jnp.concatenate(parts, axis=1)

    def _condition_positions(self, batch: Batch, features: Sequence[str]) -> np.ndarray:
        """bool [C]: the condition positions that `features` fill (empty `features` = all)."""
        sizes = [_flat_length(batch[s.feature].shape, s) for s in self.config.conditions]
        return np.concatenate(
            [np.full(n, not features or s.feature in features) for s, n in zip(self.config.conditions, sizes)]
        )

    def null_conditions(
        self, batch: Batch, cond: jax.Array, drop: jax.Array, features: Optional[Sequence[str]] = None
    ) -> jax.Array:
        """`cond` [B, C] with the ids of `features` (default: the guided conditions) NULL_COND
        where `drop` [B] is true."""
        mask = self._condition_positions(batch, self.config.guided_conditions if features is None else features)
        return jnp.where(drop[:, None] & jnp.asarray(mask)[None], NULL_COND_ID, cond)

    def target_codes(self, batch: Batch) -> jax.Array:
        """[B, T] raw target codes (flattened frame-major)."""
        return self._feature(batch, self.config.target).astype(jnp.int32)

    def build_sequences(self, batch: Batch, cond_dropout_rng: Optional[jax.Array] = None) -> dict[str, jax.Array]:
        """Model inputs and targets of a batch.

        Returns inputs [B, C+T] (= [BOS] + sequence[:-1]), targets [B, T] (target ids),
        weights [B, T] (1 where the target code is not padding) and cond_dropped [B] (bool).
        With `cond_dropout_rng`, each example's condition ids become NULL_COND with
        probability `cond_dropout_rate`, and each `condition_dropout` feature's with its own rate.
        """
        cond = self.condition_ids(batch)
        spec = self.config.target
        codes = self.target_codes(batch)
        targets = self.layout.to_ids(codes, spec.stream, spec.first_level, spec.num_levels)
        weights = (codes >= 0).astype(jnp.float32)
        batch_size = cond.shape[0]
        dropped = jnp.zeros((batch_size,), bool)
        if cond_dropout_rng is not None and self.config.cond_dropout_rate > 0.0:
            dropped = jax.random.bernoulli(cond_dropout_rng, self.config.cond_dropout_rate, (batch_size,))
            cond = self.null_conditions(batch, cond, dropped)
        if cond_dropout_rng is not None:
            for i, (feature, rate) in enumerate(self.config.condition_dropout):
                drop = jax.random.bernoulli(jax.random.fold_in(cond_dropout_rng, i + 1), rate, (batch_size,))
                cond = self.null_conditions(batch, cond, drop, (feature,))
        sequence = jnp.concatenate([cond, targets], axis=1)
        bos = jnp.full((batch_size, 1), BOS_ID, jnp.int32)
        inputs = jnp.concatenate([bos, sequence[:, :-1]], axis=1)
        return {"inputs": inputs, "targets": targets, "weights": weights, "cond_dropped": dropped}

    def sequence_length(self, input_shapes: Mapping[str, Sequence[int]]) -> tuple[int, int]:
        """(condition length C, target length T) in tokens for these feature shapes."""
        cond = sum(_flat_length(input_shapes[s.feature], s) for s in self.config.conditions)
        target = _flat_length(input_shapes[self.config.target.feature], self.config.target)
        return cond, target

    # --- BaseModel ---------------------------------------------------------------------------

    def get_initial_variables(self, rng: jax.Array, input_shapes: Mapping[str, Sequence[int]]) -> Variables:
        cond_len, target_len = self.sequence_length(input_shapes)
        ids = jnp.zeros((1, cond_len + target_len), jnp.int32)  # params do not depend on batch size
        variables = self.module.init({"params": rng}, ids, deterministic=True)
        return {"params": variables["params"]}

    def target_window(self) -> tuple[int, int]:
        """(lo, hi): the ids the target stream's levels span, the only columns the stage's
        logits need (`DecoderStack` logits_window)."""
        spec = self.config.target
        lo, hi = self.layout.level_ranges(spec.stream, spec.first_level, spec.num_levels)
        return int(lo.min()), int(hi.max())

    def logits(
        self,
        params: Any,
        inputs: jax.Array,
        dropout_rng: Optional[jax.Array] = None,
        num_logits: Optional[int] = None,
        logits_window: Optional[tuple[int, int]] = None,
    ) -> jax.Array:
        """Full (teacher-forced) forward pass: [B, L] input ids -> [B, L, vocab] float32 logits
        (only the last `num_logits` positions if given; only ids [lo, hi) with `logits_window`)."""
        deterministic = dropout_rng is None
        rngs = {} if deterministic else {"dropout": dropout_rng}
        return self.module.apply(
            {"params": params},
            inputs,
            deterministic=deterministic,
            rngs=rngs,
            num_logits=num_logits,
            logits_window=logits_window,
        )

    def loss_fn(self, params: Any, batch: Batch, dropout_rng: Optional[jax.Array]) -> tuple[jax.Array, Metrics]:
        cond_rng = model_rng = None
        if dropout_rng is not None:
            cond_rng, model_rng = jax.random.split(dropout_rng)
        seq = self.build_sequences(batch, cond_rng)
        # Input position C + j predicts target token j: only the last T positions need logits,
        # and only over the target stream's ids. The softmax is over the ids of each
        # position's own level, the distribution sampling draws from.
        spec = self.config.target
        window_lo, window_hi = self.target_window()
        num_targets = seq["targets"].shape[1]
        logits = self.logits(
            params, seq["inputs"], model_rng, num_logits=num_targets, logits_window=(window_lo, window_hi)
        )
        if spec.num_levels > 1:
            lo, hi = self.layout.level_ranges(spec.stream, spec.first_level, spec.num_levels)
            level = jnp.arange(num_targets) % spec.num_levels
            ids = window_lo + jnp.arange(window_hi - window_lo)
            legal = (ids >= jnp.asarray(lo)[level, None]) & (ids < jnp.asarray(hi)[level, None])
            logits = jnp.where(legal, logits, NEG_INF)
        weights = seq["weights"]
        targets = jnp.clip(seq["targets"] - window_lo, 0, window_hi - window_lo - 1)  # padding: weight 0
        log_z = jax.nn.logsumexp(logits, axis=-1)
        target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
        token_loss = log_z - target_logit
        if self.config.z_loss > 0:
            token_loss = token_loss + self.config.z_loss * jnp.square(log_z)
        num_tokens = jnp.sum(weights)
        denom = jnp.maximum(num_tokens, 1.0)
        loss = jnp.sum(token_loss * weights) / denom
        correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
        metrics = {
            "accuracy": jnp.sum(correct * weights) / denom,
            "num_tokens": num_tokens,
            "cross_entropy": jnp.sum((log_z - target_logit) * weights) / denom,
        }
        return loss, metrics

    # --- sampling ----------------------------------------------------------------------------

    def prefix_codes(self, batch: Batch) -> Optional[jax.Array]:
        """The continuation prefix [B, P] (raw codes) in a predict batch, if any.

        `batch['target_prefix']` if present; else the target feature, unless that feature is
        also a condition feature (fine acoustic stage), where it is only a condition.
        """
        spec = self.config.target
        if TARGET_PREFIX_KEY in batch:
            codes = batch[TARGET_PREFIX_KEY]
        elif spec.feature in batch and spec.feature not in {c.feature for c in self.config.conditions}:
            codes = batch[spec.feature]
        else:
            return None
        codes = self.layout.flatten(codes, spec.stream, spec.first_level, spec.num_levels).astype(jnp.int32)
        return codes if codes.shape[1] > 0 else None

    def prompt_ids(self, batch: Batch, *, null_condition: bool = False) -> jax.Array:
        """[B, 1 + C + P]: BOS, condition ids (the guided ones NULL_COND if `null_condition`),
        prefix ids."""
        cond = self.condition_ids(batch)
        if null_condition:
            cond = self.null_conditions(batch, cond, jnp.ones(cond.shape[:1], bool))
        parts = [jnp.full((cond.shape[0], 1), BOS_ID, jnp.int32), cond]
        prefix = self.prefix_codes(batch)
        if prefix is not None:
            spec = self.config.target
            parts.append(self.layout.to_ids(prefix, spec.stream, spec.first_level, spec.num_levels))
        return jnp.concatenate(parts, axis=1)

    def predict_batch(
        self,
        params: Any,
        batch: Batch,
        rng: Optional[jax.Array] = None,
        *,
        num_target_tokens: int,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        guidance_scale: float = 0.0,
        num_samples: int = 1,
    ) -> jax.Array:
        """Samples target codes: int32 [B * num_samples, num_target_tokens] (frame-major flat).

        `num_target_tokens` counts the whole target, continuation prefix included: a prefix of
        P codes (see `prefix_codes`) is copied to the first P output positions and the model
        samples the remaining num_target_tokens - P. Rows b * num_samples + s are the samples
        of prompt b. `guidance_scale` > 0 (a Python number: it decides whether the batch is
        doubled) enables classifier-free guidance (logits cond + s * (cond - uncond)); `temperature`
        0 is greedy. `rng=None` uses a fixed key (reproducible output).
        """
        spec = self.config.target
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        prefix = self.prefix_codes(batch)
        prefix_len = 0 if prefix is None else prefix.shape[1]
        if prefix_len > num_target_tokens:
            raise ValueError(
                f"continuation prefix has {prefix_len} target tokens, more than num_target_tokens={num_target_tokens}"
            )
        prompt = self.prompt_ids(batch)
        guided = float(guidance_scale) != 0.0
        uncond = self.prompt_ids(batch, null_condition=True) if guided else None
        if num_samples > 1:
            prompt = jnp.repeat(prompt, num_samples, axis=0)
            uncond = None if uncond is None else jnp.repeat(uncond, num_samples, axis=0)
            prefix = None if prefix is None else jnp.repeat(prefix, num_samples, axis=0)
        if rng is None:
            rng = jax.random.key(0)
        lo, hi = self.layout.level_ranges(spec.stream, spec.first_level, spec.num_levels)
        ids = decoding.generate(
            self.module,
            params,
            prompt,
            rng,
            num_steps=num_target_tokens - prefix_len,
            level_lo=tuple(int(x) for x in lo),
            level_hi=tuple(int(x) for x in hi),
            start_position=prefix_len,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            guidance_scale=float(guidance_scale),
            uncond_prompt=uncond,
        )
        codes = self.layout.to_codes(ids, spec.stream, spec.first_level, spec.num_levels, start=prefix_len)
        if prefix is not None:
            codes = jnp.concatenate([prefix, codes], axis=1)
        return codes

    # --- sizes -------------------------------------------------------------------------------

    def param_count(self, input_shapes: Optional[Mapping[str, Sequence[int]]] = None) -> int:
        """Number of parameters (via jax.eval_shape: nothing is allocated)."""
        if input_shapes is None:  # params do not depend on sequence length; any shape will do
            input_shapes = {s.feature: (1, 1) for s in (*self.config.conditions, self.config.target)}
        shapes = jax.eval_shape(lambda: self.get_initial_variables(jax.random.key(0), input_shapes))
        return count_params(shapes["params"])

    def flops_per_example(self, input_shapes: Mapping[str, Sequence[int]]) -> Optional[float]:
        """Training FLOPs (forward + backward) per example, analytic:

            6 * N * L  +  12 * num_layers * num_heads * head_dim * L^2

        L = condition + target tokens; N = parameters in matmuls = all parameters except the
        input embedding table (a gather), i.e. including the untied output projection. The
        second term is the attention score and value matmuls (2 * 2 * L^2 * H * D per layer
        forward, x3 for forward + backward), counted over the full L x L square (causal
        masking is not subtracted, as in the PaLM MFU convention).
        """
        cfg = self.config
        cond_len, target_len = self.sequence_length(input_shapes)
        length = cond_len + target_len
        n_layers = self.param_count(input_shapes) - 2 * self.layout.vocab_size * cfg.d_model
        window_lo, window_hi = self.target_window()
        logits = cfg.d_model * (window_hi - window_lo) * target_len
        attention = 12 * cfg.num_layers * cfg.num_heads * cfg.head_dim * length**2
        return float(6 * (n_layers * length + logits) + attention)
