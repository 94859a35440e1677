"""SoundStream: the neural codec (waveform <-> acoustic tokens) and its GAN training step.

Parameters are three groups, each with its own optimiser (`optimizer_groups`):
  generator      SEANet encoder + decoder (trained by the reconstruction, commitment,
                 adversarial and feature-matching losses); or the frame-rate spectral nets of
                 nn/spectral_codec.py (SEANetConfig.encoder / decoder), down to no encoder
                 parameters at all for the 'spectrum' encoder, whose decoder ('griffin_lim')
                 trains on magnitudes and decodes with Griffin-Lim
  discriminator  STFT + 3-scale waveform discriminators (hinge or least-squares loss)
  codebooks      the residual VQ, updated by EMA in the step (k-means initialised on the
                 first batch, dead codes restarted from batch vectors), never by gradients.
The step (`custom_train_step`) updates the generator every step and the discriminator from
`discriminator_start_step` on, every `discriminator_update_every` steps. A negative
`discriminator_start_step` trains a reconstruction-only codec: the discriminators are never
run (the step is ~2-4x cheaper; useful for a warm-up run and for quick tests).
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Callable, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from musiclm_jax.audio import plots
from musiclm_jax.models import codec_losses
from musiclm_jax.models.base import BaseModel, Batch, Metrics, Variables
from musiclm_jax.nn import config_io, quantizer, spectral_codec
from musiclm_jax.nn.discriminators import DiscriminatorConfig, Discriminators
from musiclm_jax.nn.seanet import SEANetConfig, SEANetDecoder, SEANetEncoder
from musiclm_jax.nn.spectral_codec import ISTFTDecoder, MagnitudeDecoder, SpectrumEncoder, STFTEncoder


@dataclasses.dataclass(frozen=True)
class SoundStreamConfig:
    sample_rate: int = 24000
    seanet: SEANetConfig = SEANetConfig()
    discriminators: DiscriminatorConfig = DiscriminatorConfig()
    num_levels: int = 12
    codebook_size: int = 1024
    quantizer_dropout: bool = True
    ema_decay: float = 0.99
    # A code is dead when its EMA assignment count falls below this fraction of the uniform
    # share (batch vectors / codebook size); it is then restarted from a batch vector.
    dead_code_fraction: float = 0.01
    kmeans_iters: int = 10
    # Loss weights (SoundStream / EnCodec conventions).
    mel_weight: float = 1.0
    # Multi-resolution linear STFT loss (codec_losses.multi_resolution_stft_loss); 0 = off.
    stft_weight: float = 0.0
    # Magnitude floor under the losses' logarithms. 1e-5 (EnCodec's) lets digitally silent bands
    # (synthetic music above its partials, rests) dominate the log terms; a higher floor makes the
    # losses about what is audible.
    log_floor: float = 1e-5
    waveform_l1_weight: float = 0.1
    commitment_weight: float = 1.0
    adversarial_weight: float = 1.0
    feature_matching_weight: float = 10.0
    adversarial_loss: str = "hinge"  # 'hinge' | 'lsgan'
    discriminator_start_step: int = 0
    discriminator_update_every: int = 1
    # Optimiser overrides per network (fields of OptimizerConfig), e.g. a slower discriminator.
    generator_optimizer: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    discriminator_optimizer: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    # Decoder fine-tuning: the encoder and codebooks stay exactly as restored, so every token
    # already computed with this codec (precompute caches, stages trained on them) stays valid;
    # only the decoder (and the discriminators) train. Needs a trained codec: resume its
    # MODEL_DIR or start from it with train's restore_params_from.
    frozen_tokens: bool = False
    # Decode-time phase recovery of the 'griffin_lim' decoder (SEANetConfig.decoder).
    griffin_lim_iters: int = 32

    def __post_init__(self):
        if self.adversarial_loss not in ("hinge", "lsgan"):
            raise ValueError(
                f"SoundStreamConfig.adversarial_loss must be 'hinge' or 'lsgan', got {self.adversarial_loss!r}"
            )
        if self.num_levels < 1 or self.codebook_size < 2:
            raise ValueError("SoundStreamConfig needs num_levels >= 1 and codebook_size >= 2")
        if self.discriminator_update_every < 1:
            raise ValueError("SoundStreamConfig.discriminator_update_every must be >= 1")
        if self.seanet.decoder == "griffin_lim" and self.gan_enabled:
            raise ValueError(
                "SEANetConfig.decoder='griffin_lim' trains on magnitudes and has no differentiable waveform "
                "for the discriminators: set SoundStreamConfig.discriminator_start_step = -1"
            )

    @property
    def gan_enabled(self) -> bool:
        """discriminator_start_step < 0: a reconstruction-only codec (no discriminator is run)."""
        return self.discriminator_start_step >= 0

    @property
    def hop_length(self) -> int:
        return math.prod(self.seanet.strides)

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.hop_length

    def bitrate(self, levels: int) -> float:
        """Bits per second at `levels` quantizer levels."""
        return self.frame_rate * levels * math.log2(self.codebook_size)

    def to_dict(self) -> dict:
        """JSON-able: dtypes become their names (the sub-configs convert names back)."""
        return config_io.to_plain(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "SoundStreamConfig":
        d = dict(d)
        d["seanet"] = SEANetConfig(**config_io.tuples(d["seanet"]))
        d["discriminators"] = DiscriminatorConfig(**config_io.tuples(d["discriminators"]))
        return cls(**d)


def _boxed(tree):
    """Codebooks carry no logical axes: replicated (they are small and read by every shard)."""
    return jax.tree.map(lambda x: nn.LogicallyPartitioned(x, (None,) * x.ndim), tree)


def eval_levels(num_levels: int) -> list[int]:
    """1, 2, 4, ... and all levels: the bitrates a codec evaluation reports."""
    levels = [2**i for i in range(num_levels.bit_length()) if 2**i < num_levels]
    return levels + [num_levels]


def quality_by_levels(metrics: Mapping[str, float]) -> list[dict]:
    """The per-level eval metrics (`mel_distance_q{n}`, `si_sdr_q{n}`, `bitrate_kbps_q{n}`) as
    rows [{levels, bitrate_kbps, si_sdr, mel_distance}] sorted by levels."""
    levels = sorted({int(m.group(1)) for k in metrics for m in [re.fullmatch(r"si_sdr_q(\d+)", k)] if m})
    return [
        {
            "levels": n,
            "bitrate_kbps": float(metrics[f"bitrate_kbps_q{n}"]),
            "si_sdr": float(metrics[f"si_sdr_q{n}"]),
            "mel_distance": float(metrics[f"mel_distance_q{n}"]),
        }
        for n in levels
    ]


class SoundStream(BaseModel):
    FEATURE_DTYPES = {"audio": jnp.float32}

    def __init__(self, config: SoundStreamConfig = SoundStreamConfig()):
        self.config = config
        seanet = config.seanet
        encoders = {"seanet": SEANetEncoder, "stft": STFTEncoder, "spectrum": SpectrumEncoder}
        self.encoder = encoders[seanet.encoder](seanet)
        decoders = {"seanet": SEANetDecoder, "istft": ISTFTDecoder, "griffin_lim": MagnitudeDecoder}
        self.decoder = decoders[seanet.decoder](seanet)
        self.decodes_magnitudes = seanet.decoder == "griffin_lim"
        self.discriminator = Discriminators(config.discriminators)

    # ---- the interface -------------------------------------------------------------------
    def config_dict(self) -> dict:
        return {"model": "SoundStream", "config": self.config.to_dict()}

    def optimizer_groups(self):
        return {
            "generator": dict(self.config.generator_optimizer),
            "discriminator": dict(self.config.discriminator_optimizer),
            "codebooks": None,
        }

    def get_initial_variables(self, rng: jax.Array, input_shapes: Mapping[str, Sequence[int]]) -> Variables:
        samples = self._check_length(input_shapes["audio"][-1])
        r_enc, r_dec, r_disc, r_cb = jax.random.split(rng, 4)
        audio = jnp.zeros((1, samples), jnp.float32)
        latents = jnp.zeros((1, samples // self.config.hop_length, self.config.seanet.dim), jnp.float32)
        codebooks = quantizer.init_codebooks(
            r_cb, self.config.num_levels, self.config.codebook_size, self.config.seanet.dim
        )
        return {
            "params": {
                "generator": {
                    "encoder": self.encoder.init(r_enc, audio).get("params", {}),  # SpectrumEncoder has none
                    "decoder": self.decoder.init(r_dec, latents).get("params", {}),
                },
                "discriminator": self.discriminator.init(r_disc, audio)["params"],
                "codebooks": _boxed(codebooks),
            }
        }

    def _check_length(self, samples: int) -> int:
        if samples % self.config.hop_length:
            raise ValueError(
                f"audio length {samples} is not a multiple of the codec's hop {self.config.hop_length} "
                f"(strides {self.config.seanet.strides})"
            )
        return samples

    # ---- pieces --------------------------------------------------------------------------
    def encode_latents(self, params, audio: jax.Array) -> jax.Array:
        return self.encoder.apply({"params": params["generator"]["encoder"]}, audio)

    def decode_latents(self, params, latents: jax.Array) -> jax.Array:
        out = self.decoder.apply({"params": params["generator"]["decoder"]}, latents)
        if self.decodes_magnitudes:
            return spectral_codec.griffin_lim(jnp.exp(out), self.config.hop_length, self.config.griffin_lim_iters)
        return out

    def encode(self, params, audio: jax.Array, num_levels: Optional[int] = None) -> jax.Array:
        """int32 codes [batch, frames, levels] of audio [batch, samples] (samples a multiple of the hop)."""
        return quantizer.encode(params["codebooks"], self.encode_latents(params, audio), num_levels)

    def decode(self, params, codes: jax.Array) -> jax.Array:
        """Waveforms [batch, frames * hop] from codes [batch, frames, levels <= num_levels]."""
        return self.decode_latents(params, quantizer.decode(params["codebooks"], codes))

    def predict_batch(self, params, batch: Batch, rng=None, **kwargs) -> jax.Array:
        return self.encode(params, batch["audio"], kwargs.get("num_levels"))

    def _discriminate(self, disc_params, audio):
        return self.discriminator.apply({"params": disc_params}, audio)

    # ---- losses --------------------------------------------------------------------------
    def _generator_loss(self, gen_params, params, audio, num_levels, step, sample_rng, with_gan: bool = True):
        cfg = self.config
        if cfg.frozen_tokens:  # no gradient work for an encoder that will not change
            gen_params = {**gen_params, "encoder": jax.lax.stop_gradient(gen_params["encoder"])}
        full = {**params, "generator": gen_params}
        latents = self.encode_latents(full, audio)
        q = quantizer.quantize(params["codebooks"], latents, num_active_levels=num_levels, rng=sample_rng)
        if self.decodes_magnitudes:  # trained on spectra: no waveform in the step
            log_magnitude = self.decoder.apply({"params": gen_params["decoder"]}, q.quantized)
            target = jnp.abs(spectral_codec.frame_spectrum(audio, cfg.hop_length))
            mel, spec = codec_losses.magnitude_losses(target, log_magnitude, cfg.sample_rate, floor=cfg.log_floor)
            total = cfg.mel_weight * mel + cfg.stft_weight * spec + cfg.commitment_weight * q.commit_loss
            metrics = {"mel_loss": mel, "stft_loss": spec, "commit_loss": q.commit_loss}
            return total, (metrics, q, None)
        recon = self.decode_latents(full, q.quantized)
        mel = codec_losses.multi_scale_mel_loss(audio, recon, cfg.sample_rate, floor=cfg.log_floor)
        l1 = codec_losses.waveform_l1(audio, recon)
        total = cfg.mel_weight * mel + cfg.waveform_l1_weight * l1 + cfg.commitment_weight * q.commit_loss
        metrics = {"mel_loss": mel, "waveform_l1": l1, "commit_loss": q.commit_loss}
        if cfg.stft_weight:  # static: no STFTs in the graph when off
            spec = codec_losses.multi_resolution_stft_loss(audio, recon, floor=cfg.log_floor)
            total = total + cfg.stft_weight * spec
            metrics["stft_loss"] = spec
        if with_gan:  # static: a reconstruction-only codec never runs the discriminators
            real = self._discriminate(params["discriminator"], audio)
            fake = self._discriminate(params["discriminator"], recon)
            adv = codec_losses.adversarial_generator_loss([logits for logits, _ in fake], cfg.adversarial_loss)
            fm = codec_losses.feature_matching_loss([jax.lax.stop_gradient(f) for _, f in real], [f for _, f in fake])
            gan_on = (step >= cfg.discriminator_start_step).astype(jnp.float32)
            total = total + gan_on * (cfg.adversarial_weight * adv + cfg.feature_matching_weight * fm)
            metrics.update(adversarial_loss=adv, feature_matching_loss=fm)
        return total, (metrics, q, recon)

    def _discriminator_loss(self, disc_params, audio, recon):
        real = self._discriminate(disc_params, audio)
        fake = self._discriminate(disc_params, jax.lax.stop_gradient(recon))
        return codec_losses.adversarial_discriminator_loss(
            [r for r, _ in real], [f for f, _ in fake], self.config.adversarial_loss
        )

    def loss_fn(self, params, batch: Batch, dropout_rng=None):
        """The generator's reconstruction objective with all levels (no GAN terms): what eval reports."""
        loss, (metrics, _, _) = self._generator_loss(
            params["generator"], params, batch["audio"], None, jnp.asarray(-1), None, with_gan=False
        )
        return loss, metrics

    def eval_fn(self, params, batch: Batch) -> Metrics:
        """Reconstruction quality at each level count 1, 2, 4, ..., all: multi-scale mel
        distance, SI-SDR, bitrate and codebook utilisation (fraction of codes used)."""
        cfg = self.config
        audio = batch["audio"]
        latents = self.encode_latents(params, audio)
        codes = quantizer.encode(params["codebooks"], latents)
        out: Metrics = {}
        for n in eval_levels(cfg.num_levels):
            recon = self.decode(params, codes[..., :n])
            out[f"mel_distance_q{n}"] = jnp.mean(codec_losses.mel_distance(audio, recon, cfg.sample_rate))
            out[f"si_sdr_q{n}"] = jnp.mean(codec_losses.si_sdr(audio, recon))
            out[f"bitrate_kbps_q{n}"] = jnp.asarray(cfg.bitrate(n) / 1000.0)
        used = jax.vmap(lambda c: jnp.zeros(cfg.codebook_size).at[c.reshape(-1)].max(1.0).mean(), in_axes=-1)(codes)
        for level in range(cfg.num_levels):
            out[f"codebook_usage_l{level}"] = used[level]
        out["loss"] = out[f"mel_distance_q{cfg.num_levels}"]
        return out

    def requires_trained_params(self) -> Optional[str]:
        """frozen_tokens keeps the encoder and codebooks as restored: a fresh init has none."""
        if self.config.frozen_tokens:
            return "frozen_tokens fine-tunes the decoder of a trained codec"
        return None

    def media_sample_rate(self) -> int:
        return self.config.sample_rate

    def eval_media(self, params, batch: Batch) -> dict[str, jax.Array]:
        """The first 3 inputs and their reconstructions with all levels and with one level."""
        audio = batch["audio"][:3]
        codes = self.encode(params, audio)
        return {
            "input": audio,
            "reconstruction": self.decode(params, codes),
            "reconstruction_1_level": self.decode(params, codes[..., :1]),
        }

    def write_eval_report(self, metrics, output_dir: str, step: int) -> None:
        rows = quality_by_levels(metrics)
        if not rows:
            raise ValueError("no per-level codec metrics (si_sdr_q<n>) to plot")
        plots.quality_vs_bitrate(rows, f"{output_dir}/codec-quality-{step}.png", title=f"SoundStream step {step}")

    # ---- the GAN step --------------------------------------------------------------------
    def custom_train_step(self, optimizers: Mapping[str, optax.GradientTransformation], schedule: Callable):
        cfg = self.config

        def step(state, batch, rng):
            rng = jax.random.fold_in(rng, state.step)
            r_levels, r_sample, r_restart, r_kmeans = jax.random.split(rng, 4)
            audio = batch["audio"]
            params = state.params
            codebooks = params["codebooks"]
            # k-means initialisation of the codebooks from the first batch's latents (frozen
            # tokens: the restored codebooks are used as they are).
            if not cfg.frozen_tokens:
                codebooks = jax.lax.cond(
                    codebooks["initialized"] < 0.5,
                    lambda cb: quantizer.kmeans_init(
                        cb, jax.lax.stop_gradient(self.encode_latents(params, audio)), r_kmeans, iters=cfg.kmeans_iters
                    ),
                    lambda cb: cb,
                    codebooks,
                )
            params = {**params, "codebooks": codebooks}
            levels = quantizer.quantizer_dropout_levels(r_levels, cfg.num_levels) if cfg.quantizer_dropout else None

            grad_fn = jax.value_and_grad(self._generator_loss, has_aux=True)
            (g_loss, (metrics, q, recon)), g_grads = grad_fn(
                params["generator"], params, audio, levels, state.step, r_sample, cfg.gan_enabled
            )
            if cfg.gan_enabled:
                d_loss, d_grads = jax.value_and_grad(self._discriminator_loss)(params["discriminator"], audio, recon)
            else:
                d_loss, d_grads = jnp.zeros(()), jax.tree.map(jnp.zeros_like, params["discriminator"])

            g_updates, g_opt = optimizers["generator"].update(
                g_grads, state.opt_state["generator"], params["generator"]
            )
            new_gen = optax.apply_updates(params["generator"], g_updates)
            if cfg.frozen_tokens:  # Adam's momentum would still move it
                new_gen = {**new_gen, "encoder": params["generator"]["encoder"]}
            d_updates, d_opt = optimizers["discriminator"].update(
                d_grads, state.opt_state["discriminator"], params["discriminator"]
            )
            new_disc = optax.apply_updates(params["discriminator"], d_updates)
            train_d = (
                cfg.gan_enabled
                & (state.step >= cfg.discriminator_start_step)
                & (state.step % cfg.discriminator_update_every == 0)
            )
            keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(train_d, n, o), new, old)  # noqa: E731
            new_disc = keep(new_disc, params["discriminator"])
            d_opt = keep(d_opt, state.opt_state["discriminator"])

            # Codebooks: EMA of assignments, then restart the codes that fell out of use.
            if cfg.frozen_tokens:
                new_cb, dead = codebooks, jnp.zeros((cfg.num_levels,), jnp.int32)
            else:
                new_cb = quantizer.ema_update(codebooks, q.counts, q.sums, decay=cfg.ema_decay)
                vectors = math.prod(q.codes.shape[:-1])
                threshold = cfg.dead_code_fraction * vectors / cfg.codebook_size
                new_cb, dead = quantizer.restart_dead_codes(new_cb, q.samples, r_restart, threshold=threshold)

            new_state = state.replace(
                step=state.step + 1,
                params={"generator": new_gen, "discriminator": new_disc, "codebooks": new_cb},
                opt_state={**state.opt_state, "generator": g_opt, "discriminator": d_opt},
            )
            g_norm, d_norm = optax.tree.norm(g_grads), optax.tree.norm(d_grads)
            finite = jnp.isfinite(g_loss) & jnp.isfinite(d_loss) & jnp.isfinite(g_norm) & jnp.isfinite(d_norm)
            new_state = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new_state, state)
            metrics = {
                **metrics,
                "loss": g_loss,
                "discriminator_loss": d_loss,
                "grad_norm": g_norm,
                "grad_norm_discriminator": d_norm,
                "learning_rate": schedule(state.step),
                "finite": finite,
                "active_levels": jnp.asarray(cfg.num_levels if levels is None else levels, jnp.float32),
            }
            if recon is not None:
                metrics["si_sdr"] = jnp.mean(codec_losses.si_sdr(audio, recon))
            for level in range(cfg.num_levels):
                metrics[f"perplexity_l{level}"] = q.perplexity[level]
                metrics[f"dead_codes_l{level}"] = dead[level].astype(jnp.float32)
            return new_state, metrics

        return step
