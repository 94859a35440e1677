"""FAD embedders: the VGGish front end (frames, HTK-mel bands, 0.96 s examples), a VGGish-shaped
network round-tripped through its TF-slim-named weights file (the released architecture's
shapes checked with eval_shape), MuLan's audio tower, the registry and FAD on their points."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from musiclm_jax.evaluation import embedders, metrics

SR = 16000


def test_front_end_frames_bands_and_examples():
    t = np.arange(int(2.5 * SR)) / SR
    tone = (0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    ex = embedders.vggish_examples(tone, SR)
    assert ex.shape == (2, 96, 64) and embedders.num_examples(2.5) == 2  # 0.96 s patches, no overlap
    assert embedders.vggish_examples(tone[:8000], SR).shape == (0, 96, 64)  # shorter than 0.975 s
    # a 1 kHz tone peaks in the band whose centre is nearest 1 kHz on the HTK mel scale
    edges = np.linspace(embedders._hz_to_mel(125), embedders._hz_to_mel(7500), 66)
    centres_hz = 700 * (np.exp(edges[1:-1] / 1127) - 1)
    assert int(ex[0].mean(0).argmax()) == int(np.abs(centres_hz - 1000).argmin())
    weights = embedders.vggish_mel_matrix()
    assert weights.shape == (257, 64) and np.all(weights[0] == 0) and np.all(weights.max(0) > 0.5)
    # the same clip at 48 kHz gives nearly the same patches (resampled to 16 kHz first)
    t48 = np.arange(int(2.5 * 48000)) / 48000
    ex48 = embedders.vggish_examples((0.5 * np.sin(2 * np.pi * 1000 * t48)).astype(np.float32), 48000)
    assert np.abs(ex48 - ex).mean() < 0.1


def test_released_architecture_shapes():
    shapes = jax.eval_shape(
        lambda: embedders._vggish_module(embedders.VGGishConfig()).init(jax.random.key(0), jnp.zeros((1, 96, 64)))
    )["params"]
    assert shapes["conv1"]["kernel"].shape == (3, 3, 1, 64)
    assert shapes["fc1_fc1_1"]["kernel"].shape == (12288, 4096)  # 6 x 4 x 512 after four pools
    assert shapes["fc2"]["kernel"].shape == (4096, 128)
    assert sum(np.prod(x.shape) for x in jax.tree.leaves(shapes)) == pytest.approx(72.1e6, rel=0.01)


def test_weights_file_round_trip_registry_and_fad(tmp_path):
    config = embedders.VGGishConfig(channels=(4, 8, 8, 8, 16, 16), fc=(32, 32, 8))
    params = embedders.VGGishEmbedder.init_params(config)
    path = str(tmp_path / "vggish.npz")
    embedders.vggish_params_to_npz(params, path)
    with np.load(path) as f:
        assert "vggish/conv3/conv3_1/weights" in f.files and f["vggish/fc2/biases"].shape == (8,)
    loaded = embedders.get_embedder("vggish", weights=path, batch_size=4)
    assert loaded.config == config
    rng = np.random.default_rng(0)
    noise = [0.1 * rng.standard_normal(2 * SR).astype(np.float32) for _ in range(3)]
    t = np.arange(2 * SR) / SR
    tones = [(0.3 * np.sin(2 * np.pi * f * t)).astype(np.float32) for f in (220, 440, 880)]
    points = loaded.fad_points(noise, SR)
    assert points.shape == (6, 8)  # 2 examples per 2 s clip
    direct = embedders._vggish_module(config).apply({"params": params}, embedders.vggish_examples(noise[0], SR))
    np.testing.assert_allclose(points[:2], np.asarray(direct), rtol=1e-5, atol=1e-6)
    # FAD: noise vs other noise is closer than noise vs tones
    other = loaded.fad_points([0.1 * rng.standard_normal(2 * SR).astype(np.float32) for _ in range(3)], SR)
    assert metrics.fad(points, other) < metrics.fad(points, loaded.fad_points(tones, SR))
    (tmp_path / "bad.npz").write_bytes(b"")
    np.savez(tmp_path / "bad.npz", x=np.zeros(2))
    with pytest.raises(ValueError, match="not a VGGish weights file"):
        embedders.get_embedder("vggish", weights=str(tmp_path / "bad.npz"))
    with pytest.raises(ValueError, match="unknown embedder"):
        embedders.get_embedder("trill")
    embedders.register_embedder(
        "constant", lambda dim=3: type("E", (), {"fad_points": lambda self, c, sr: np.ones((len(c), dim))})()
    )
    assert embedders.get_embedder("constant").fad_points(noise, SR).shape == (3, 3)


def test_mulan_audio_embedder_one_point_per_clip(tokenizer_model_dirs):
    emb = embedders.get_embedder("mulan", model_dir=tokenizer_model_dirs["mulan_dir"])
    clips = [np.random.default_rng(i).standard_normal(SR).astype(np.float32) * 0.1 for i in range(3)]
    points = emb.fad_points(clips, SR)
    assert points.shape[0] == 3 and np.allclose(np.linalg.norm(points, axis=1), 1, atol=1e-5)
