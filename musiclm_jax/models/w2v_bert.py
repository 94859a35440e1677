"""w2v-BERT (Chung et al. 2021): the self-supervised audio encoder whose MLM-module features,
k-means quantized, are MusicLM's semantic tokens (25 Hz).

  audio [B, samples] 16 kHz
    -> log-mel (audio/mel.py; 80 bands, 25 ms window, 10 ms hop: 100 Hz)
    -> conv subsampler: two 3x3 stride-2 2-D convs + ReLU over (time, mel) -> 4x fewer frames (25 Hz)
    -> flatten (mel x channels) -> Dense(d_model) -> LayerNorm               = features [B, T, d]
  target quantizer on the UNMASKED features (see below)   -> target ids [B, T], code vectors [B, T, dim]
  span masking (wav2vec 2.0): each frame starts a `mask_span`-frame span with prob `mask_prob`
    (at least one span per example); masked frames -> a learned mask embedding
  contrastive module (conformer) -> Dense(codebook_dim) = context vectors: at masked positions,
    InfoNCE of cos(context, true code vector) / kappa against `num_negatives` code vectors sampled
    from other masked positions of the same utterance; + the diversity loss
    (K - exp(entropy of the batch-average code distribution)) / K
  MLM module (conformer) on the contrastive module's output -> Dense(codebook_size): cross-entropy
    of the target ids at masked positions

The quantizer: nearest codebook entry in cosine space (a learned projection of the features to
`codebook_dim`, L2-normalised, against L2-normalised codes), trained by the VQ-VAE codebook loss
(online k-means: codes move to the mean of their frames) plus beta x commitment, and by the
diversity loss on softmax(cosines / diversity_temperature), which keeps unused codes alive. Chosen
over wav2vec 2.0's Gumbel-softmax after trying both on the tiny config: with Gumbel noise the
targets are noise-dominated until the logits grow (hundreds of thousands of steps in wav2vec 2.0),
and the diversity loss is satisfied by flattening every frame's distribution rather than by using
more codes; the nearest-codebook targets are deterministic from the first step and their soft
assignment cannot be flattened by shrinking weights (cosines are scale-free). Two further choices,
both switchable:
  * `center_quantizer_input`: the quantizer sees each clip's features minus their mean over the
    clip's frames. At initialisation a component shared by every frame carries most of the
    features' energy, so every frame picks the same code and the codebook collapses at once;
    centring removes it. The contrastive loss only compares frames of one utterance, so the part
    of a target that is constant over a clip is useless to it anyway.
  * `quantizer_stop_gradient`: the targets do not train the front end (as in HuBERT, BEST-RQ and
    data2vec, and as w2v-BERT's MLM targets, which are discrete ids). Otherwise the shared features
    drift under the MLM/contrastive losses and the targets move with them; in short runs the MLM
    then never beats the majority code. The code vectors still get the contrastive gradient.
Negatives that share the positive's code are kept (fairseq masks them): masking them would make a
collapsed codebook a zero-loss optimum of the contrastive loss; kept, they bound the loss below
by log(1 + duplicates). Contrastive accuracy is strict: the true target must beat every negative.

Semantic tokens come from `embeddings(params, audio, layer)`: the output of MLM-module layer
`layer` (1-based; the paper uses the 7th) on unmasked audio, computed by running only the first
`layer` MLM layers. `predict_batch` returns it for `embedding_layer`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from musiclm_jax.audio.mel import log_mel
from musiclm_jax.models.base import BaseModel, Batch, Metrics, Variables
from musiclm_jax.nn import axes, config_io
from musiclm_jax.nn.conformer import ConformerConfig, ConformerStack
from musiclm_jax.nn.initializers import he_normal
from musiclm_jax.nn.layers import NEG_INF, dense, l2_normalize, masked_mean, norm

# The paper's w2v-BERT XL: 12 contrastive + 12 MLM conformer layers, d 1024 (~600M params).
PAPER_CONFORMER = ConformerConfig(
    num_layers=12, num_heads=8, head_dim=128, d_model=1024, d_ff=4096, conv_kernel_size=5, dropout_rate=0.1
)


@dataclasses.dataclass(frozen=True)
class W2vBertConfig:
    """Defaults = the paper's sizes (w2v-BERT XL as used by MusicLM, 16 kHz, 25 Hz features)."""

    sample_rate: int = 16000
    n_fft: int = 400
    hop_length: int = 160
    n_mels: int = 80
    # Fixed affine normalisation of the natural-log mel (floored at 1e-5), as MuLan's.
    mel_offset: float = 5.0
    mel_scale: float = 0.25
    subsampler_channels: int = 128
    contrastive: ConformerConfig = PAPER_CONFORMER
    mlm: ConformerConfig = PAPER_CONFORMER
    # Target quantizer (see the module docstring).
    codebook_size: int = 1024
    codebook_dim: int = 64
    diversity_temperature: float = 0.1
    commitment_cost: float = 0.25
    center_quantizer_input: bool = True
    quantizer_stop_gradient: bool = True
    # Masking and the contrastive task (wav2vec 2.0's values).
    mask_prob: float = 0.065
    mask_span: int = 10
    num_negatives: int = 100
    contrastive_temperature: float = 0.1
    # total = contrastive + diversity + codebook (VQ) + mlm, each weighted
    contrastive_weight: float = 1.0
    diversity_weight: float = 0.1
    codebook_weight: float = 1.0
    mlm_weight: float = 1.0
    # The MLM-module layer (1-based) whose output `predict_batch` returns (semantic tokens).
    embedding_layer: int = 7

    def __post_init__(self):
        config_io.check_positive_ints(
            self,
            "sample_rate",
            "n_fft",
            "hop_length",
            "n_mels",
            "subsampler_channels",
            "codebook_size",
            "codebook_dim",
            "num_negatives",
            "mask_span",
            "embedding_layer",
        )
        if self.contrastive.d_model != self.mlm.d_model:
            raise ValueError(
                f"W2vBertConfig: the contrastive ({self.contrastive.d_model}) and MLM "
                f"({self.mlm.d_model}) modules must have the same d_model"
            )
        if not 0.0 < self.mask_prob < 1.0:
            raise ValueError(f"W2vBertConfig.mask_prob must be in (0, 1), got {self.mask_prob}")
        for name in ("diversity_temperature", "contrastive_temperature"):
            if getattr(self, name) <= 0:
                raise ValueError(f"W2vBertConfig.{name} must be positive, got {getattr(self, name)}")
        for name in ("contrastive_weight", "diversity_weight", "codebook_weight", "mlm_weight", "commitment_cost"):
            if getattr(self, name) < 0:
                raise ValueError(f"W2vBertConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.embedding_layer > self.mlm.num_layers:
            raise ValueError(
                f"W2vBertConfig.embedding_layer={self.embedding_layer} exceeds the MLM module's "
                f"{self.mlm.num_layers} layers"
            )
        if self.n_mels < 4:
            raise ValueError(f"W2vBertConfig.n_mels must be >= 4 (two stride-2 convs), got {self.n_mels}")

    @property
    def d_model(self) -> int:
        return self.mlm.d_model

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.hop_length / 4

    def num_frames(self, num_samples: int) -> int:
        """Feature frames of a clip: samples // hop mel frames, halved (rounding up) twice."""
        mel_frames = num_samples // self.hop_length
        if mel_frames < 1:
            raise ValueError(f"w2v-BERT needs at least hop_length={self.hop_length} samples, got {num_samples}")
        half = (mel_frames + 1) // 2  # 3x3 stride-2 conv, padding 1: ceil(n / 2)
        return (half + 1) // 2

    def to_dict(self) -> dict:
        return config_io.to_plain(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "W2vBertConfig":
        d = dict(d)
        d["contrastive"] = ConformerConfig(**d["contrastive"])
        d["mlm"] = ConformerConfig(**d["mlm"])
        return cls(**d)


# ----------------------------------------------------------------------------------------
# Masking, negatives and losses (pure functions)
# ----------------------------------------------------------------------------------------


def span_mask(rng: jax.Array, batch: int, length: int, prob: float, span: int) -> jax.Array:
    """wav2vec 2.0 span mask, bool [batch, length]: each of the first length - span + 1 frames
    starts a span of `span` frames with probability `prob` (spans stay inside the clip and may
    overlap); an example without any start gets one start uniformly at random, so every example
    has at least min(span, length) masked frames. Deterministic given `rng`."""
    span = min(span, length)
    n_starts = length - span + 1
    k_start, k_forced = jax.random.split(rng)
    starts = jax.random.bernoulli(k_start, prob, (batch, n_starts))
    forced = jax.nn.one_hot(jax.random.randint(k_forced, (batch,), 0, n_starts), n_starts, dtype=jnp.bool_)
    starts = starts | (forced & ~jnp.any(starts, axis=1, keepdims=True))
    counts = jnp.cumsum(jnp.pad(starts.astype(jnp.int32), ((0, 0), (0, span - 1))), axis=1)  # [B, length]
    before = jnp.pad(counts, ((0, 0), (span, 0)))[:, :length]  # starts before t - span + 1
    return counts > before


def sample_negatives(rng: jax.Array, mask: jax.Array, num_negatives: int) -> tuple[jax.Array, jax.Array]:
    """For every frame, `num_negatives` frame indices drawn uniformly (with replacement) from the
    OTHER masked frames of the same example: (indices int32 [B, T, K], valid bool [B, T, K]).
    `valid` is False where the example has a single masked frame (nothing to draw); rows of
    unmasked frames are drawn too but meaningless."""
    b, t = mask.shape
    order = jnp.argsort(~mask, axis=1, stable=True).astype(jnp.int32)  # masked frames first, in time order
    n = jnp.sum(mask, axis=1).astype(jnp.int32)  # [B]
    rank = jnp.cumsum(mask, axis=1).astype(jnp.int32) - 1  # a masked frame's rank among its example's
    r = jax.random.randint(rng, (b, t, num_negatives), 0, jnp.maximum(n - 1, 1)[:, None, None])
    r = r + (r >= rank[..., None]).astype(jnp.int32)  # skip the frame itself
    r = jnp.minimum(r, t - 1)
    idx = jax.vmap(lambda o, i: o[i])(order, r)
    valid = jnp.broadcast_to((n > 1)[:, None, None], idx.shape)
    return idx, valid


def contrastive_loss(
    context: jax.Array,
    quantized: jax.Array,
    mask: jax.Array,
    neg_idx: jax.Array,
    neg_valid: jax.Array,
    temperature: float,
) -> tuple[jax.Array, jax.Array]:
    """wav2vec 2.0's InfoNCE at masked frames: -log softmax over [true, negatives] of cos / kappa.

    context, quantized [B, T, D]; mask [B, T]; neg_idx/neg_valid [B, T, K] (`sample_negatives`).
    Returns (mean loss over masked frames, fraction of masked frames whose true target scores
    strictly above every negative). Similarities are all-pairs per utterance [B, T, T] then
    gathered: O(T^2 D) compute, but never a [B, T, K, D] tensor of negatives."""
    c, q = l2_normalize(context), l2_normalize(quantized)
    sims = jnp.einsum("btd,bsd->bts", c, q, precision=jax.lax.Precision.HIGHEST)
    pos = jnp.diagonal(sims, axis1=1, axis2=2)  # [B, T]
    neg = jnp.take_along_axis(sims, neg_idx, axis=-1)  # [B, T, K]
    neg = jnp.where(neg_valid, neg, NEG_INF * temperature)
    logits = jnp.concatenate([pos[..., None], neg], axis=-1) / temperature
    ce = jax.nn.logsumexp(logits, axis=-1) - logits[..., 0]
    correct = logits[..., 0] > jnp.max(logits[..., 1:], axis=-1)
    return masked_mean(ce, mask), masked_mean(correct, mask)


def diversity_loss(probs: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(K - perplexity) / K of the average code distribution `probs` [N, K] -> (loss, perplexity)."""
    avg = jnp.mean(probs.astype(jnp.float32), axis=0)
    perplexity = jnp.exp(-jnp.sum(avg * jnp.log(avg + 1e-7)))
    k = probs.shape[-1]
    return (k - perplexity) / k, perplexity


def code_perplexity(codes: jax.Array, codebook_size: int) -> jax.Array:
    """exp(entropy) of the hard code usage in `codes` (any shape)."""
    usage = jnp.mean(jax.nn.one_hot(codes.reshape(-1), codebook_size, dtype=jnp.float32), axis=0)
    return jnp.exp(-jnp.sum(usage * jnp.log(usage + 1e-7)))


# ----------------------------------------------------------------------------------------
# The network
# ----------------------------------------------------------------------------------------


class W2vBertNet(nn.Module):
    config: W2vBertConfig

    def setup(self):
        c = self.config
        dt, pdt = c.contrastive.dtype, c.contrastive.param_dtype

        def conv(name):
            return nn.Conv(
                c.subsampler_channels,
                (3, 3),
                strides=(2, 2),
                padding=((1, 1), (1, 1)),
                dtype=dt,
                param_dtype=pdt,
                name=name,
                kernel_init=nn.with_logical_partitioning(
                    he_normal(), (axes.CONV_HEIGHT, axes.CONV_WIDTH, axes.CONV_IN, axes.CONV_OUT)
                ),
                bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (axes.CONV_OUT,)),
            )

        self.subsample_conv1 = conv("subsample_conv1")
        self.subsample_conv2 = conv("subsample_conv2")
        biased = dict(use_bias=True, param_dtype=pdt)
        self.feature_proj = dense(c.d_model, (None, axes.EMBED), "feature_proj", dtype=dt, **biased)
        self.feature_norm = norm("feature_norm", dtype=dt, param_dtype=pdt)
        # The quantizer works in float32 whatever the activation dtype.
        # No bias: the input is centred, and a bias would add back a component shared by all frames.
        self.quantizer_kernel = self.param(
            "quantizer_kernel",
            nn.with_logical_partitioning(nn.initializers.lecun_normal(), (axes.EMBED, None)),
            (c.d_model, c.codebook_dim),
            jnp.float32,
        )
        self.codebook = self.param(
            "codebook",
            nn.with_logical_partitioning(nn.initializers.normal(1.0), (axes.VOCAB, None)),
            (c.codebook_size, c.codebook_dim),
            jnp.float32,
        )
        self.mask_embedding = self.param(
            "mask_embedding",
            nn.with_logical_partitioning(nn.initializers.uniform(1.0), (axes.EMBED,)),
            (c.d_model,),
            pdt,
        )
        self.contrastive = ConformerStack(c.contrastive, name="contrastive")
        self.context_proj = dense(c.codebook_dim, (axes.EMBED, None), "context_proj", dtype=jnp.float32, **biased)
        self.mlm = ConformerStack(c.mlm, name="mlm")
        self.mlm_head = dense(c.codebook_size, (axes.EMBED, axes.VOCAB), "mlm_head", dtype=jnp.float32, **biased)
        self.input_dropout = nn.Dropout(rate=c.contrastive.dropout_rate)

    def log_mel(self, audio: jax.Array) -> jax.Array:
        """audio [B, samples] -> normalised log-mel float32 [B, samples // hop, n_mels]."""
        c = self.config
        if audio.ndim != 2:
            raise ValueError(f"w2v-BERT expects audio [batch, samples], got shape {audio.shape}")
        mel = log_mel(audio.astype(jnp.float32), c.sample_rate, c.n_fft, c.hop_length, c.n_mels)
        return (mel[:, : audio.shape[1] // c.hop_length] + c.mel_offset) * c.mel_scale  # drop the centred extra frame

    def features(self, audio: jax.Array) -> jax.Array:
        """audio [B, samples] -> [B, T, d_model] (T = config.num_frames(samples))."""
        c = self.config
        mel = self.log_mel(audio)
        h = nn.with_logical_constraint(mel.astype(c.contrastive.dtype)[..., None], axes.IMAGE_ACT)
        h = nn.relu(self.subsample_conv1(h))
        h = nn.relu(self.subsample_conv2(h))  # [B, T, mels / 4, C]
        h = h.reshape(h.shape[0], h.shape[1], -1)
        h = self.feature_norm(self.feature_proj(h))
        return nn.with_logical_constraint(h, axes.EMBED_ACT)

    def quantize(self, features: jax.Array):
        """Nearest code in cosine space -> (target ids int32 [B, T], code vectors float32 [B, T, dim]
        (unit norm), cosines to every code float32 [B, T, K], VQ loss [])."""
        c = self.config
        x = features.astype(jnp.float32)
        if c.quantizer_stop_gradient:
            x = jax.lax.stop_gradient(x)
        if c.center_quantizer_input:
            x = x - jnp.mean(x, axis=1, keepdims=True)
        z = l2_normalize(jnp.einsum("btd,dk->btk", x, self.quantizer_kernel))
        codebook = l2_normalize(self.codebook)
        sims = jnp.einsum("btd,kd->btk", z, codebook, precision=jax.lax.Precision.HIGHEST)
        sims = nn.with_logical_constraint(sims, axes.VOCAB_ACT)
        ids = jnp.argmax(sims, axis=-1).astype(jnp.int32)
        code = jnp.take(codebook, ids, axis=0)
        vq_loss = jnp.mean(jnp.sum(jnp.square(jax.lax.stop_gradient(z) - code), -1)) + c.commitment_cost * jnp.mean(
            jnp.sum(jnp.square(z - jax.lax.stop_gradient(code)), -1)
        )
        # Straight-through to the projected features unless the targets are stop-gradient.
        quantized = code if c.quantizer_stop_gradient else z + jax.lax.stop_gradient(code - z)
        return ids, quantized, sims, vq_loss

    def __call__(self, audio: jax.Array, mask: jax.Array, *, deterministic: bool = True) -> dict[str, jax.Array]:
        """Training forward with `mask`ed frames (bool [B, T])."""
        feats = self.features(audio)
        codes, quantized, sims, vq_loss = self.quantize(feats)
        x = self.input_dropout(feats, deterministic=deterministic)
        x = jnp.where(mask[..., None], self.mask_embedding.astype(x.dtype), x)
        h = self.contrastive(x, None, deterministic=deterministic)
        context = self.context_proj(h.astype(jnp.float32))
        m = self.mlm(h, None, deterministic=deterministic)
        logits = self.mlm_head(m.astype(jnp.float32))
        return {
            "codes": codes,
            "quantized": quantized,
            "code_similarities": sims,
            "vq_loss": vq_loss,
            "context": context,
            "mlm_logits": nn.with_logical_constraint(logits, axes.VOCAB_ACT),
        }

    def embed(self, audio: jax.Array, return_layers: bool = False) -> jax.Array:
        """Unmasked, deterministic: the MLM module's output [B, T, d] (its last layer), or every
        MLM layer's [mlm_layers, B, T, d]."""
        h = self.contrastive(self.features(audio), None, deterministic=True)
        return self.mlm(h, None, deterministic=True, return_layers=return_layers)


def _raw(tree: Any) -> Any:
    is_box = lambda x: isinstance(x, nn.meta.AxisMetadata)  # noqa: E731
    return jax.tree.map(lambda x: x.unbox() if is_box(x) else x, tree, is_leaf=is_box)


class W2vBert(BaseModel):
    FEATURE_DTYPES = {"audio": jnp.float32}

    def __init__(self, config: W2vBertConfig = W2vBertConfig()):
        self.config = config
        self.module = W2vBertNet(config)

    def config_dict(self) -> dict:
        return {"model": "W2vBert", "config": self.config.to_dict()}

    def get_initial_variables(self, rng: jax.Array, input_shapes: Mapping[str, Sequence[int]]) -> Variables:
        samples = int(input_shapes["audio"][-1])
        frames = self.config.num_frames(samples)
        audio = jnp.zeros((1, samples), jnp.float32)
        mask = jnp.zeros((1, frames), jnp.bool_)
        return {"params": self.module.init({"params": rng}, audio, mask)["params"]}

    def forward(self, params, audio: jax.Array, rng: Optional[jax.Array]) -> tuple[dict, jax.Array]:
        """The training forward: (outputs, mask). rng None = deterministic (eval): a fixed mask
        key, no dropout."""
        c = self.config
        deterministic = rng is None
        rng = jax.random.PRNGKey(0) if rng is None else rng
        k_mask, k_neg, k_drop = jax.random.split(rng, 3)
        mask = span_mask(k_mask, audio.shape[0], c.num_frames(audio.shape[1]), c.mask_prob, c.mask_span)
        out = self.module.apply(
            {"params": params},
            audio,
            mask,
            deterministic=deterministic,
            rngs={} if deterministic else {"dropout": k_drop},
        )
        out["neg_idx"], out["neg_valid"] = sample_negatives(k_neg, mask, c.num_negatives)
        return out, mask

    def loss_fn(self, params, batch: Batch, dropout_rng: Optional[jax.Array]) -> tuple[jax.Array, Metrics]:
        c = self.config
        out, mask = self.forward(params, batch["audio"], dropout_rng)
        l_con, con_acc = contrastive_loss(
            out["context"], out["quantized"], mask, out["neg_idx"], out["neg_valid"], c.contrastive_temperature
        )
        probs = jax.nn.softmax(out["code_similarities"] / c.diversity_temperature, axis=-1)
        l_div, prob_perplexity = diversity_loss(probs.reshape(-1, c.codebook_size))
        targets = jax.lax.stop_gradient(out["codes"])
        logits = out["mlm_logits"]
        ce = jax.nn.logsumexp(logits, axis=-1) - jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
        l_mlm = masked_mean(ce, mask)
        mlm_acc = masked_mean(jnp.argmax(logits, axis=-1) == targets, mask)
        loss = (
            c.contrastive_weight * l_con
            + c.diversity_weight * l_div
            + c.codebook_weight * out["vq_loss"]
            + c.mlm_weight * l_mlm
        )
        metrics = {
            "contrastive_loss": l_con,
            "diversity_loss": l_div,
            "codebook_loss": out["vq_loss"],
            "mlm_loss": l_mlm,
            "mlm_accuracy": mlm_acc,
            "contrastive_accuracy": con_acc,
            "codebook_perplexity": code_perplexity(out["codes"], c.codebook_size),
            "prob_perplexity": prob_perplexity,
            "mask_fraction": jnp.mean(mask.astype(jnp.float32)),
        }
        return loss, metrics

    def eval_warning(self, history: Sequence[Mapping[str, float]]) -> Optional[str]:
        """Loud when the target codebook has collapsed (perplexity < 2 in the last two evals):
        every target is then the same code and the MLM accuracy means nothing."""
        last = [h["codebook_perplexity"] for h in history[-2:] if "codebook_perplexity" in h]
        if len(last) == 2 and max(last) < 2.0:
            return (
                f"w2v-BERT TARGET CODEBOOK COLLAPSED: codebook perplexity {last[-1]:.2f} of "
                f"{self.config.codebook_size} codes in the last two evals; the MLM accuracy is meaningless. "
                "Raise diversity_weight, keep center_quantizer_input and quantizer_stop_gradient on, or "
                "lower the learning rate."
            )
        return None

    def embeddings(self, params, audio: jax.Array, layer: int) -> jax.Array:
        """Output of MLM-module layer `layer` (1-based), unmasked and deterministic: float32
        [B, T, d]. Only the first `layer` MLM layers run."""
        c = self.config
        if not 1 <= layer <= c.mlm.num_layers:
            raise ValueError(f"w2v-BERT layer must be in [1, {c.mlm.num_layers}] (MLM-module layers), got {layer}")
        module, params = self.module, _raw(params)
        if layer < c.mlm.num_layers:
            module = W2vBertNet(
                dataclasses.replace(
                    c, mlm=dataclasses.replace(c.mlm, num_layers=layer), embedding_layer=min(c.embedding_layer, layer)
                )
            )
            params = dict(params)
            if c.mlm.scan_layers:
                mlm = dict(params["mlm"])
                mlm["layers"] = jax.tree.map(lambda x: x[:layer], mlm["layers"])
                params["mlm"] = mlm
        return module.apply({"params": params}, audio, method=W2vBertNet.embed).astype(jnp.float32)

    def all_layer_embeddings(self, params, audio: jax.Array) -> jax.Array:
        """Every MLM-module layer's output, float32 [mlm_layers, B, T, d] (unmasked, deterministic)."""
        return self.module.apply({"params": params}, audio, True, method=W2vBertNet.embed).astype(jnp.float32)

    def predict_batch(self, params, batch: Batch, rng: Optional[jax.Array] = None, **kwargs) -> jax.Array:
        """The semantic-token features: `embeddings` at `config.embedding_layer`, [B, T, d]."""
        return self.embeddings(params, batch["audio"], self.config.embedding_layer)
