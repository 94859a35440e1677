"""FAD embedders: the VGGish front end (frames, HTK-mel bands, 0.96 s examples), a VGGish-shaped
network round-tripped through its TF-slim-named weights file (the released architecture's
shapes checked with eval_shape), MuLan's audio tower, musicnn's published tagger from its pip
package (offline), the registry and KAD / FAD on their points."""

import importlib.util
import os

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
    # KAD (6 points in 8 dimensions: too few for FAD): noise vs other noise is closer than noise vs tones
    other = loaded.fad_points([0.1 * rng.standard_normal(2 * SR).astype(np.float32) for _ in range(3)], SR)
    assert metrics.kad(points, other) < metrics.kad(points, loaded.fad_points(tones, SR))
    with pytest.raises(metrics.TooFewClips):
        metrics.fad(points, other)
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


def _plucks(seed: int, seconds: float = 3.0) -> np.ndarray:
    """Decaying harmonic notes, two a second (a plucked / piano-like line)."""
    rng, x = np.random.default_rng(seed), np.zeros(int(seconds * SR))
    t = np.arange(SR // 2) / SR
    for start in range(0, len(x), SR // 2):
        f = 110 * 2 ** (rng.integers(0, 24) / 12)
        note = sum(np.sin(2 * np.pi * f * k * t) / k for k in range(1, 6)) * np.exp(-4 * t)
        x[start : start + len(t)] += note[: len(x) - start]
    return (0.2 * x).astype(np.float32)


def _beats(seed: int, seconds: float = 3.0) -> np.ndarray:
    """Noise bursts over a decaying 60 Hz thump, 280 a minute (a drum loop)."""
    rng, x = np.random.default_rng(seed), np.zeros(int(seconds * SR))
    t = np.arange(SR // 10) / SR
    for start in np.arange(0, seconds, 60 / 280):
        i = int(start * SR)
        hit = rng.standard_normal(len(t)) * np.exp(-40 * t) + 2 * np.sin(2 * np.pi * 60 * t) * np.exp(-20 * t)
        x[i : i + len(t)] += hit[: len(x) - i]
    return (0.2 * x).astype(np.float32)


def test_musicnn_loads_offline_from_its_package_and_tells_music_apart(monkeypatch):
    """The published MagnaTagATune musicnn (weights inside its pip package: no download) as a
    FAD / KAD embedder and a tagger: different music, different embeddings and tags."""
    if importlib.util.find_spec("musicnn") is None:
        if os.environ.get("MUSICLM_SKIP_MUSICNN_TESTS") == "1":
            pytest.skip("MUSICLM_SKIP_MUSICNN_TESTS=1 and no musicnn package")
        pytest.fail("the musicnn embedder test needs `pip install --no-deps musicnn==0.1.0` (.ci/run installs it)")
    emb = embedders.get_embedder("musicnn")
    plucks, beats = [_plucks(i) for i in range(6)], [_beats(i) for i in range(6)]
    points = emb.fad_points(plucks + beats, SR)
    assert points.shape == (12, 200) and np.all(np.isfinite(points))  # one 3 s patch per clip
    # 3 clips a side (FAD would need 201): ~0 (measured 1e-6) against ~1.5 for other music
    assert metrics.kad(points[:3], points[3:6]) < 0.5 < metrics.kad(points[:3], points[6:9])
    # a short clip is repeat-padded to one patch; a loud one stays finite (float16 overflow)
    assert emb.fad_points([plucks[0][: SR // 2], 8 * beats[0]], SR).shape == (2, 200)
    assert np.all(np.isfinite(emb.fad_points([8 * beats[0]], SR)))
    tags = emb.tags(plucks + beats, SR)
    assert tags.shape == (12, 50) and len(emb.labels) == 50 and "drums" in emb.labels
    top = {
        name: emb.labels[int(tags[rows].mean(0).argmax())]
        for name, rows in (("plucks", slice(6)), ("beats", slice(6, 12)))
    }
    assert top["plucks"] != top["beats"]
    beat_tags = [emb.labels.index(t) for t in ("techno", "beat", "electronic")]
    assert tags[6:, beat_tags].mean() > 2 * tags[:6, beat_tags].mean()
    with pytest.raises(ValueError, match="unknown musicnn model"):
        embedders.MusicnnEmbedder("MTT_vgg")
    # its tags as a KLD classifier for real music: the 50 tags as one distribution, and per named
    # tag a Bernoulli; the same clips give 0, other music more
    from musiclm_jax.evaluation import text_to_music

    classifier = text_to_music.MusicnnTagClassifier(tags=("drums", "piano", "slow", "fast"))
    p = classifier.label_distributions(np.stack(plucks[:3] + beats[:3]), SR)
    assert set(p) == {"tags", "drums", "piano", "slow", "fast"} and p["tags"].shape == (6, 50)
    np.testing.assert_allclose(p["tags"].sum(1), 1, rtol=1e-6)
    same = text_to_music.kld_by_label_set(classifier, np.stack(plucks[:3]), np.stack(plucks[:3]), SR)
    other = text_to_music.kld_by_label_set(classifier, np.stack(plucks[:3]), np.stack(beats[:3]), SR)
    assert same["mean"] == pytest.approx(0, abs=1e-9) and other["tags"] > 0.1
    with pytest.raises(ValueError, match="has no tags"):
        text_to_music.MusicnnTagClassifier(tags=("kazoo",))
    # without the package: an error that says what to install
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match="pip install --no-deps musicnn"):
        embedders.get_embedder("musicnn")
