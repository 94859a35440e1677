"""Token-space attribute probes (evaluation/token_probes.py) and the synthetic labels by id."""

import numpy as np
import pytest

from musiclm_jax.data import synthetic
from musiclm_jax.evaluation import token_probes

SIZES = {"mulan": 8, "semantic": 16, "acoustic": 12}


def _clips(rng, n, informative=True):
    """Clips whose tokens depend on register (MuLan level 0, the semantic code range, acoustic
    level 1) and drums, or, uninformative, do not."""
    labels = [synthetic.labels_of(0, i) for i in range(n)]
    reg = np.array([("low", "mid", "high").index(lab["register"]) for lab in labels])
    drums = np.array([lab["drums"] for lab in labels], int)
    if not informative:
        reg, drums = rng.permutation(reg), rng.permutation(drums)
    mulan = rng.integers(0, 8, (n, 3))
    mulan[:, 0] = reg * 2 + drums  # 6 of 8 codes
    semantic = rng.integers(0, 3, (n, 50)) + 3 * reg[:, None]  # codes 0-8 by register
    hits = (rng.random((n, 50)) < 0.3) & drums[:, None].astype(bool)
    semantic[hits] = rng.integers(12, 16, hits.sum())  # drum frames: codes 12-15
    acoustic = rng.integers(0, 12, (n, 40, 2))
    acoustic[:, :, 1] = rng.integers(0, 3, (n, 40)) + 3 * reg[:, None]  # codes 0-8 by register
    hits = (rng.random((n, 40)) < 0.3) & drums[:, None].astype(bool)
    acoustic[:, :, 1][hits] = rng.integers(9, 12, hits.sum())  # drum frames: codes 9-11
    return {"mulan": mulan, "semantic": semantic, "acoustic": acoustic}, labels


def _accuracy(predicted, labels, attr):
    return np.mean([p[attr] == lab[attr] for p, lab in zip(predicted, labels)])


def test_probes_read_attributes_from_tokens_and_not_from_noise():
    rng = np.random.default_rng(0)
    train, train_labels = _clips(rng, 240)
    probes = token_probes.fit_probes(train, train_labels, codebook_sizes=SIZES, attributes=("register", "drums"))
    assert set(probes) == {(s, a) for s in SIZES for a in ("register", "drums")}
    test_tokens, test_labels = _clips(np.random.default_rng(1), 120)
    predicted = token_probes.predict(probes, test_tokens)
    for stream in SIZES:
        assert _accuracy(predicted[stream], test_labels, "register") > 0.9, stream
        assert _accuracy(predicted[stream], test_labels, "drums") > 0.75, stream
        assert all(isinstance(p["drums"], bool) for p in predicted[stream])  # typed as the source's labels
    # Tokens that carry no attribute: the probes fall to about chance on new clips.
    noise, noise_labels = _clips(np.random.default_rng(2), 240, informative=False)
    probes = token_probes.fit_probes(noise, noise_labels, codebook_sizes=SIZES, attributes=("register",))
    fresh, fresh_labels = _clips(np.random.default_rng(3), 300, informative=False)
    predicted = token_probes.predict(probes, fresh)
    assert all(_accuracy(predicted[s], fresh_labels, "register") < 0.5 for s in SIZES)


def test_probe_features_and_bad_input():
    sem = np.array([[0, 0, 1, 3]])
    np.testing.assert_allclose(token_probes.features("semantic", sem, 4), [[0.5, 0.25, 0, 0.25]])
    assert token_probes.features("acoustic", np.zeros((2, 5, 3), int), 4).shape == (2, 12)
    assert token_probes.features("mulan", np.array([[1, 2]]), 4).tolist() == [[0, 1, 0, 0, 0, 0, 1, 0]]
    with pytest.raises(ValueError, match=r"in \[0, 4\)"):
        token_probes.features("semantic", np.array([[4]]), 4)
    with pytest.raises(ValueError, match="unknown stream"):
        token_probes.features("video", sem, 4)
    with pytest.raises(ValueError, match="nothing to fit"):
        token_probes.fit_probes(
            {"semantic": np.zeros((3, 4), int)},
            [{"drums": True}] * 3,
            codebook_sizes={"semantic": 4},
            attributes=("drums",),
        )


def test_labels_of_id_matches_rendered_examples():
    ex = synthetic.render(0, 5, duration_s=0.5)
    assert synthetic.labels_of_id(ex.id) == synthetic.labels_of(0, 5) == ex.labels
    with pytest.raises(ValueError, match="not a synthetic example id"):
        synthetic.labels_of_id("clip-0-5")
    with pytest.raises(ValueError, match="not a synthetic example id"):
        synthetic.labels_of_id("synthetic5")
