"""SEANet encoder/decoder, discriminators, JAX log-mel and codec losses (tiny, CPU)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from musiclm_jax.audio.mel import log_mel
from musiclm_jax.models import codec_losses as L
from musiclm_jax.nn import signal, spectral_codec
from musiclm_jax.nn.discriminators import DiscriminatorConfig, Discriminators
from musiclm_jax.nn.seanet import SEANetConfig, SEANetDecoder, SEANetEncoder

SR = 8000


def _tiny_seanet(causal):
    return SEANetConfig(channels=4, dim=8, strides=(2, 3), channel_multipliers=(2, 4), causal=causal)


def _tiny_disc():
    return DiscriminatorConfig(
        stft_window=64, stft_hop=16, stft_channels=4, wave_channels=4, wave_max_channels=16, wave_downsample=(4, 4)
    )


def test_spectral_codec_inverts_the_stft_and_keeps_lengths():
    """The head's inverse STFT is exact on an STFT (centred frames, overlap normalised: no edge
    loss), so what the decoder cannot reproduce is its layers' doing, not the head's."""
    hop = 12
    x = jax.random.normal(jax.random.PRNGKey(0), (2, hop * 20))
    spectrum = signal.stft(x, spectral_codec.OVERLAP * hop, hop)[:, :20]
    np.testing.assert_allclose(np.asarray(spectral_codec.istft(spectrum, hop)), np.asarray(x), atol=1e-5)
    cfg = SEANetConfig(
        channels=4,
        dim=8,
        strides=(3, 4),
        channel_multipliers=(2, 4),
        encoder="stft",
        decoder="istft",
        frame_channels=16,
    )
    encoder, decoder = spectral_codec.STFTEncoder(cfg), spectral_codec.ISTFTDecoder(cfg)
    audio = jax.random.normal(jax.random.PRNGKey(1), (2, 7 * 12))
    latents, _ = encoder.init_with_output(jax.random.PRNGKey(2), audio)
    assert latents.shape == (2, 7, 8)
    y, _ = decoder.init_with_output(jax.random.PRNGKey(3), latents)
    assert y.shape == (2, 7 * 12) and bool(jnp.all(jnp.isfinite(y)))
    with pytest.raises(ValueError, match="decoder must be"):
        SEANetConfig(decoder="wavenet")
    with pytest.raises(ValueError, match="encoder must be"):
        SEANetConfig(encoder="mel")


def test_spectrum_codec_latents_decoder_gate_and_config_errors():
    """The 'spectrum' encoder's latent is the clipped log spectrum itself (no parameters); the
    'griffin_lim' decoder behind it starts as the identity on it (the correction's gate is zero)
    and is the identity, with no parameters, without the correction."""
    hop = 12
    cfg = SEANetConfig(
        channels=4,
        dim=2 * hop + 1,
        strides=(3, 4),
        channel_multipliers=(2, 4),
        encoder="spectrum",
        decoder="griffin_lim",
        frame_channels=16,
    )
    audio = jax.random.normal(jax.random.PRNGKey(1), (2, 7 * hop)) * jnp.linspace(0.0, 1.0, 7 * hop)
    latents, variables = spectral_codec.SpectrumEncoder(cfg).init_with_output(jax.random.PRNGKey(2), audio)
    assert not variables.get("params")
    log_magnitude = np.log(np.maximum(np.abs(np.asarray(spectral_codec.frame_spectrum(audio, hop))), 1e-4))
    expected = np.maximum(log_magnitude, log_magnitude.max(-1, keepdims=True) - spectral_codec.DYNAMIC_RANGE)
    np.testing.assert_allclose(np.asarray(latents), expected, atol=1e-5)
    out, _ = spectral_codec.MagnitudeDecoder(cfg).init_with_output(jax.random.PRNGKey(3), latents)
    np.testing.assert_allclose(np.asarray(out), np.asarray(latents), atol=1e-6)
    plain = dataclasses.replace(cfg, spectrum_correction=False)
    out, variables = spectral_codec.MagnitudeDecoder(plain).init_with_output(jax.random.PRNGKey(3), latents)
    assert not variables.get("params")
    np.testing.assert_allclose(np.asarray(out), np.asarray(latents), atol=1e-6)
    with pytest.raises(ValueError, match="dim = 25"):
        SEANetConfig(strides=(3, 4), channel_multipliers=(2, 4), encoder="spectrum", decoder="griffin_lim", dim=8)
    with pytest.raises(ValueError, match="needs decoder='griffin_lim'"):
        SEANetConfig(strides=(3, 4), channel_multipliers=(2, 4), encoder="spectrum", dim=25)


def test_griffin_lim_keeps_the_pitch_of_true_magnitudes():
    """Decoding with fast Griffin-Lim from the STFT magnitudes alone: the loudness comes back
    and pyin finds the original's pitch (the ceiling of the 'griffin_lim' decoder); the random
    start phase has a fixed seed, so decoding is deterministic."""
    from musiclm_jax.data import synthetic
    from musiclm_jax.evaluation import pitch

    sr, hop = 24000, 240
    x = np.stack([synthetic.render(7, i, sample_rate=sr, duration_s=1.0).audio for i in range(3)]).astype(np.float32)
    magnitude = jnp.abs(spectral_codec.frame_spectrum(jnp.asarray(x), hop))
    y = np.asarray(spectral_codec.griffin_lim(magnitude, hop, iters=32))
    np.testing.assert_array_equal(y, np.asarray(spectral_codec.griffin_lim(magnitude, hop, iters=32)))
    rms = lambda a: np.sqrt(np.mean(a**2, axis=-1))  # noqa: E731
    np.testing.assert_allclose(rms(y), rms(x), rtol=0.1)
    agreement = pitch.total_agreement(list(x), list(y), sr)
    assert agreement.voiced > 50 and agreement.fraction >= 0.85, agreement
    # unmatched magnitudes (random phase, no iterations) keep far less of it
    assert (
        pitch.total_agreement(
            list(x), list(np.asarray(spectral_codec.griffin_lim(magnitude, hop, iters=0))), sr
        ).fraction
        < agreement.fraction
    )


def test_griffin_lim_codec_decoder_exports_with_symbolic_frames():
    """export.py serialises the codec decoder with a symbolic batch and number of frames; the
    Griffin-Lim decoder's re-analysis must not reflect-pad a symbolic length."""
    from jax import export

    from musiclm_jax.models.soundstream import SoundStream, SoundStreamConfig
    from musiclm_jax.training.partitioning import unbox

    seanet = SEANetConfig(strides=(3, 4), channel_multipliers=(2, 4), encoder="spectrum", decoder="griffin_lim", dim=25)
    model = SoundStream(
        SoundStreamConfig(
            sample_rate=8000,
            seanet=seanet,
            discriminators=_tiny_disc(),
            num_levels=2,
            codebook_size=8,
            discriminator_start_step=-1,
        )
    )
    params = unbox(model.get_initial_variables(jax.random.PRNGKey(0), {"audio": (1, 120)})["params"])
    b, f = export.symbolic_shape("b, f")
    exported = export.export(jax.jit(model.decode), platforms=("cpu",))(
        jax.tree.map(lambda x: jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x)), params),
        jax.ShapeDtypeStruct((b, f, 2), jnp.int32),
    )
    codes = jax.random.randint(jax.random.PRNGKey(1), (3, 17, 2), 0, 8)
    y = export.deserialize(exported.serialize()).call(params, codes)
    assert y.shape == (3, 17 * 12)
    np.testing.assert_allclose(np.asarray(y), np.asarray(model.decode(params, codes)), atol=1e-3)


def test_magnitude_losses():
    target = jnp.abs(jax.random.normal(jax.random.PRNGKey(0), (2, 10, 121))) + 0.1
    mel, spec = L.magnitude_losses(target, jnp.log(target), 16000, n_mels=20)
    assert float(mel) < 1e-5 and float(spec) < 1e-5
    worse = [sum(map(float, L.magnitude_losses(target, jnp.log(target) + d, 16000, n_mels=20))) for d in (0.1, 0.5)]
    assert 0.0 < worse[0] < worse[1]


def test_multi_resolution_stft_loss():
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 4096)) * 0.1
    y = x + 0.05 * jax.random.normal(jax.random.PRNGKey(1), (2, 4096))
    loss = jax.jit(L.multi_resolution_stft_loss)
    assert float(loss(x, x)) == 0.0 and 0.0 < float(loss(x, y)) < float(loss(x, 2 * y))
    # a partial 3% off in frequency (half a semitone) costs far more than the same tone slightly quieter
    t = jnp.arange(8192) / 24000.0
    tone = jnp.sin(2 * jnp.pi * 220.0 * t)[None]
    assert float(loss(tone, jnp.sin(2 * jnp.pi * 226.6 * t)[None])) > 3 * float(loss(tone, 0.9 * tone))


@pytest.mark.parametrize("causal", [True, False])
def test_seanet_shapes_and_exact_length(causal):
    cfg = _tiny_seanet(causal)
    assert cfg.hop_length == 6
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 60))
    enc, dec = SEANetEncoder(cfg), SEANetDecoder(cfg)
    pe = enc.init(jax.random.PRNGKey(1), x)
    z = jax.jit(enc.apply)(pe, x)
    assert z.shape == (2, 10, 8) and z.dtype == jnp.float32
    pd = dec.init(jax.random.PRNGKey(2), z)
    y = jax.jit(dec.apply)(pd, z)
    assert y.shape == (2, 60) and bool(jnp.all(jnp.isfinite(y)))
    with pytest.raises(ValueError, match="multiple of the total stride 6"):
        enc.apply(pe, x[:, :58])


@pytest.mark.parametrize("stride", [2, 3, 8])
def test_polyphase_transposed_conv_equals_lax_conv_transpose(stride):
    from musiclm_jax.nn.seanet import ConvTranspose1d

    x = jax.random.normal(jax.random.PRNGKey(1), (2, 7, 5))
    layer = ConvTranspose1d(features=3, stride=stride, causal=True)
    params = layer.init(jax.random.PRNGKey(2), x)["params"]
    kernel = params["kernel"].unbox() if hasattr(params["kernel"], "unbox") else params["kernel"]
    full = jax.lax.conv_transpose(
        x, kernel, strides=(stride,), padding="VALID", dimension_numbers=("NWC", "WIO", "NWC")
    )
    np.testing.assert_allclose(layer.apply({"params": params}, x), full[:, : 7 * stride], atol=1e-5)


def test_paper_strides_give_50hz_at_24khz():
    cfg = SEANetConfig()
    assert 24000 // cfg.hop_length == 50
    shapes = jax.eval_shape(
        lambda x: SEANetEncoder(cfg).init_with_output(jax.random.PRNGKey(0), x)[0],
        jax.ShapeDtypeStruct((1, 4800), jnp.float32),
    )
    assert shapes.shape == (1, 10, 128)


def test_causal_encoder_and_decoder_ignore_the_future():
    cfg = _tiny_seanet(True)
    x = jax.random.normal(jax.random.PRNGKey(0), (1, 60))
    x2 = x.at[:, 30:].set(jax.random.normal(jax.random.PRNGKey(9), (1, 30)))  # change frames >= 5
    enc = SEANetEncoder(cfg)
    p = enc.init(jax.random.PRNGKey(1), x)
    z, z2 = enc.apply(p, x), enc.apply(p, x2)
    np.testing.assert_allclose(z[:, :5], z2[:, :5], atol=1e-6)
    assert float(jnp.max(jnp.abs(z[:, 5:] - z2[:, 5:]))) > 1e-3
    dec = SEANetDecoder(cfg)
    pd = dec.init(jax.random.PRNGKey(2), z)
    y, y2 = dec.apply(pd, z), dec.apply(pd, z.at[:, 5:].add(1.0))
    np.testing.assert_allclose(y[:, :30], y2[:, :30], atol=1e-6)
    assert float(jnp.max(jnp.abs(y[:, 30:] - y2[:, 30:]))) > 1e-4
    # the non-causal encoder does look ahead
    enc_nc = SEANetEncoder(_tiny_seanet(False))
    pn = enc_nc.init(jax.random.PRNGKey(1), x)
    assert float(jnp.max(jnp.abs(enc_nc.apply(pn, x)[:, :5] - enc_nc.apply(pn, x2)[:, :5]))) > 1e-4


def test_discriminators_output_lists():
    cfg = _tiny_disc()
    w = jax.random.normal(jax.random.PRNGKey(0), (2, 800))
    disc = Discriminators(cfg)
    params = disc.init(jax.random.PRNGKey(1), w)
    outs = jax.jit(disc.apply)(params, w)
    assert len(outs) == 4
    for logits, feats in outs:
        assert logits.shape[0] == 2 and bool(jnp.all(jnp.isfinite(logits)))
        assert len(feats) >= 3 and all(f.shape[0] == 2 for f in feats)
    assert outs[0][0].ndim == 3  # STFT: [B, frames, freq]
    lengths = [o[0].shape[1] for o in outs[1:]]
    assert lengths[0] > lengths[1] > lengths[2]  # wave scales at 1x, 1/2, 1/4
    # grouped convs: the 16 -> 16 strided conv has groups 4
    assert params["params"]["wave"]["scale_0"]["conv_1"]["kernel"].value.shape == (41, 4, 16)


@pytest.mark.parametrize("pad_mode", ["constant", "reflect"])
def test_log_mel_matches_librosa(pad_mode):
    librosa = pytest.importorskip("librosa")
    x = np.random.RandomState(0).randn(2, 4000).astype(np.float32) * 0.3
    ours = np.asarray(jax.jit(lambda a: log_mel(a, SR, 512, 128, 40, pad_mode=pad_mode))(x))
    ref = librosa.feature.melspectrogram(y=x, sr=SR, n_fft=512, hop_length=128, n_mels=40, power=2.0, pad_mode=pad_mode)
    ref = np.log(np.maximum(ref, 1e-5)).transpose(0, 2, 1)
    assert ours.shape == ref.shape == (2, 1 + 4000 // 128, 40)
    np.testing.assert_allclose(ours, ref, atol=2e-3, rtol=1e-3)


def test_si_sdr_closed_forms():
    rng = np.random.RandomState(0)
    ref = rng.randn(3, 16000).astype(np.float32)
    f = jax.jit(L.si_sdr)
    same = np.asarray(f(ref, ref))
    assert same.shape == (3,) and np.all(same > 60)
    assert np.all(np.asarray(f(ref, 0.3 * ref + 0.7)) > 60)  # scale and offset invariant
    for snr in (0.0, 10.0, 20.0):
        noise = rng.randn(3, 16000).astype(np.float32)
        noise -= noise.mean(-1, keepdims=True)
        noise -= (noise * ref).sum(-1, keepdims=True) / (ref * ref).sum(-1, keepdims=True) * ref  # orthogonal
        noise *= np.sqrt((ref**2).sum(-1, keepdims=True) / (noise**2).sum(-1, keepdims=True) / 10 ** (snr / 10))
        np.testing.assert_allclose(np.asarray(f(ref, ref + noise)), snr, atol=0.05)


def test_adversarial_losses_at_known_logits():
    real = [jnp.full((2, 3), 2.0), jnp.full((2, 5), 0.5)]
    fake = [jnp.full((2, 3), -2.0), jnp.full((2, 5), 0.5)]
    # hinge G: mean(relu(1 - fake)) -> (3 + 0.5) / 2
    np.testing.assert_allclose(jax.jit(L.adversarial_generator_loss, static_argnames="kind")(fake, kind="hinge"), 1.75)
    # hinge D: [relu(1-2) + relu(1-2)] = 0 ; [relu(0.5) + relu(1.5)] = 2 -> 1
    np.testing.assert_allclose(L.adversarial_discriminator_loss(real, fake, "hinge"), 1.0)
    # lsgan G: [(1+2)^2, (0.5)^2] -> (9 + 0.25) / 2
    np.testing.assert_allclose(L.adversarial_generator_loss(fake, "lsgan"), 4.625)
    # lsgan D: [(1-2)^2 + 4, 0.25 + 0.25] -> (5 + 0.5) / 2
    np.testing.assert_allclose(L.adversarial_discriminator_loss(real, fake, "lsgan"), 2.75)
    with pytest.raises(ValueError, match="unknown adversarial"):
        L.adversarial_generator_loss(fake, "wgan")


def test_feature_matching_and_waveform_l1():
    real = [[jnp.full((2, 4), 2.0), jnp.ones((2, 3))], [jnp.full((1, 2), -4.0)]]
    fake = [[jnp.full((2, 4), 1.0), jnp.ones((2, 3))], [jnp.full((1, 2), -2.0)]]
    # per map: 1/2, 0, 2/4 -> mean 1/3
    np.testing.assert_allclose(jax.jit(L.feature_matching_loss)(real, fake), 1.0 / 3.0, rtol=1e-6)
    np.testing.assert_allclose(L.waveform_l1(jnp.zeros((2, 4)), jnp.full((2, 4), -0.5)), 0.5)


def test_mel_losses():
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 4096)) * 0.1
    y = x + 0.05 * jax.random.normal(jax.random.PRNGKey(1), (2, 4096))
    loss = jax.jit(lambda a, b: L.multi_scale_mel_loss(a, b, 24000))
    dist = jax.jit(lambda a, b: L.mel_distance(a, b, 24000))
    assert float(loss(x, x)) == 0.0
    assert float(loss(x, y)) > 0.0
    assert float(loss(x, 2 * y)) > float(loss(x, y))
    d_same, d = dist(x, x), dist(x, y)
    assert d.shape == (2,) and np.all(np.asarray(d_same) == 0) and np.all(np.asarray(d) > 0)
    g = jax.grad(lambda b: loss(x, b))(jnp.zeros_like(x))  # silence: gradients stay finite
    assert bool(jnp.all(jnp.isfinite(g)))


@pytest.mark.parametrize("stride,groups,padding", [(4, 4, (20, 20)), (2, 2, (3, 1)), (1, 8, (0, 0))])
def test_grouped_conv_gradients_equal_xla(stride, groups, padding):
    from musiclm_jax.nn.grouped_conv import grouped_conv1d

    kx, kw, ky = jax.random.split(jax.random.PRNGKey(0), 3)
    x = jax.random.normal(kx, (2, 37, 8))
    w = jax.random.normal(kw, (9, 8 // groups, 16))

    def xla(x, w):
        return jax.lax.conv_general_dilated(
            x, w, (stride,), (padding,), feature_group_count=groups, dimension_numbers=("NWC", "WIO", "NWC")
        )

    y = xla(x, w)
    cot = jax.random.normal(ky, y.shape)
    np.testing.assert_allclose(grouped_conv1d(x, w, stride, padding, groups), y, atol=1e-5)
    ours = jax.grad(lambda x, w: jnp.sum(grouped_conv1d(x, w, stride, padding, groups) * cot), (0, 1))(x, w)
    ref = jax.grad(lambda x, w: jnp.sum(xla(x, w) * cot), (0, 1))(x, w)
    for a, b in zip(ours, ref):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
