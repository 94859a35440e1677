"""FAD / FAD-inf / KAD / KLD / MCC maths against closed forms and scipy; the "too few clips" rule;
the binomial test every adherence figure carries."""

import numpy as np
import pytest
from scipy import spatial, stats

from musiclm_jax.evaluation import metrics


def _w2_symmetric(mean_a, cov_a, mean_b, cov_b):
    """Frechet (2-Wasserstein^2) distance as the FID reference computes it: scipy.linalg.sqrtm of
    the product S_a S_b (independent of metrics' symmetric eigendecomposition path)."""
    from scipy import linalg

    cross = np.real(linalg.sqrtm(cov_a @ cov_b))
    return float(np.sum((mean_a - mean_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(cross))


def test_frechet_distance_of_known_gaussians():
    # diagonal covariances: |m_a - m_b|^2 + sum (sqrt(s_a) - sqrt(s_b))^2
    a = metrics.Gaussian(np.array([0.0, 1.0, 2.0]), np.diag([1.0, 4.0, 9.0]))
    b = metrics.Gaussian(np.array([1.0, 1.0, 0.0]), np.diag([4.0, 4.0, 1.0]))
    assert metrics.frechet_distance(a, b) == pytest.approx(1 + 4 + (1 - 2) ** 2 + 0 + (3 - 1) ** 2, rel=1e-9)
    assert metrics.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)
    # full, non-commuting covariances
    rng = np.random.default_rng(0)
    m = rng.standard_normal((2, 6, 6))
    cov_a, cov_b = m[0] @ m[0].T + 0.1 * np.eye(6), m[1] @ m[1].T + 0.1 * np.eye(6)
    mean_a, mean_b = rng.standard_normal(6), rng.standard_normal(6)
    got = metrics.frechet_distance(metrics.Gaussian(mean_a, cov_a), metrics.Gaussian(mean_b, cov_b))
    assert got == pytest.approx(_w2_symmetric(mean_a, cov_a, mean_b, cov_b), rel=1e-6)


def test_fad_of_samples_matches_the_fitted_gaussians_and_grows_with_shift():
    rng = np.random.default_rng(1)
    ref = rng.standard_normal((400, 8))
    same = rng.standard_normal((400, 8))
    shifted = same + 1.0
    fit_ref, fit_shift = np.mean(ref, 0), np.cov(shifted, rowvar=False)
    assert metrics.fad(ref, shifted) == pytest.approx(
        _w2_symmetric(fit_ref, np.cov(ref, rowvar=False), np.mean(shifted, 0), fit_shift), rel=1e-6
    )
    assert metrics.fad(ref, same) < 0.3 < 7.0 < metrics.fad(ref, shifted)  # shift of 1 in 8 dims: ~8
    # no more clips than dimensions: FAD is not a number, and says so
    with pytest.raises(metrics.TooFewClips, match="too few clips"):
        metrics.fad(rng.standard_normal((16, 16)), rng.standard_normal((40, 16)))
    assert np.isfinite(metrics.fad(rng.standard_normal((17, 16)), rng.standard_normal((17, 16))))
    with pytest.raises(ValueError, match="too few clips"):
        metrics.fad(ref[:1], same)
    with pytest.raises(ValueError, match="dimensions differ"):
        metrics.fad(ref, same[:, :4])


def test_kld_matches_scipy_entropy():
    rng = np.random.default_rng(2)
    p = rng.dirichlet(np.ones(5), size=30)
    q = rng.dirichlet(np.ones(5), size=30)
    expected = np.mean([stats.entropy(p[i], q[i]) for i in range(30)])
    assert metrics.kld(p, q) == pytest.approx(expected, rel=1e-6)
    assert metrics.kld(p, p) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="summing to 1"):
        metrics.kld(p * 2, q)


def test_mcc_is_the_mean_cosine():
    rng = np.random.default_rng(3)
    t, a = rng.standard_normal((10, 7)), rng.standard_normal((10, 7))
    expected = np.mean([1 - spatial.distance.cosine(t[i], a[i]) for i in range(10)])
    assert metrics.mcc(t, a) == pytest.approx(expected, rel=1e-9)
    assert metrics.mcc(t, 3 * t) == pytest.approx(1.0)


def _kad_by_loops(x, y, bandwidth):
    """Unbiased MMD^2 written out pair by pair (scipy distances), for the vectorised one."""
    k = lambda a, b: np.exp(-spatial.distance.cdist(a, b, "sqeuclidean") / (2 * bandwidth**2))  # noqa: E731
    kxx, kyy = k(x, x), k(y, y)
    n, m = len(x), len(y)
    return (
        (kxx.sum() - np.trace(kxx)) / (n * (n - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1)) - 2 * k(x, y).mean()
    )


def test_kad_is_unbiased_near_zero_for_one_distribution_positive_for_two_at_any_dimension():
    rng = np.random.default_rng(4)
    x, y = rng.standard_normal((7, 32)), rng.standard_normal((9, 32)) + 0.3
    bandwidth = np.median(spatial.distance.pdist(x))
    assert metrics.median_bandwidth(x) == pytest.approx(bandwidth)
    assert metrics.kad(x, y) == pytest.approx(_kad_by_loops(x, y, bandwidth), rel=1e-9)
    assert metrics.kad(x, y, bandwidth=2.0) == pytest.approx(_kad_by_loops(x, y, 2.0), rel=1e-9)
    # 10 clips in 64 dimensions (FAD: not a number): unbiased, so over many pairs of samples of
    # one distribution the mean is 0 within its standard error and single values go below 0...
    same = np.array([metrics.kad(rng.standard_normal((10, 64)), rng.standard_normal((10, 64))) for _ in range(200)])
    error = same.std() / np.sqrt(len(same))
    assert abs(same.mean()) < 3 * error and (same < 0).mean() > 0.2
    # ...as over random splits of one sample in two halves (the biased estimate, diagonals kept,
    # would average about 2 (1 - mean kernel) / 20 above 0)...
    pool = rng.standard_normal((40, 64))
    width = metrics.median_bandwidth(pool)
    splits = [rng.permutation(40) for _ in range(200)]
    halves = np.array([metrics.kad(pool[i[:20]], pool[i[20:]], bandwidth=width) for i in splits])
    assert abs(halves.mean()) < 3 * halves.std() / np.sqrt(len(halves)) + 1e-3
    # ...and a shift is far above that scatter
    shifted = np.array(
        [metrics.kad(rng.standard_normal((10, 64)), rng.standard_normal((10, 64)) + 1.0) for _ in range(20)]
    )
    assert shifted.min() > 5 * same.std()
    # identical points: 0 (no bandwidth to take); one point: not a number
    assert metrics.kad(np.ones((3, 4)), np.ones((5, 4))) == 0.0
    with pytest.raises(metrics.TooFewClips, match="KAD needs >= 2"):
        metrics.kad(x[:1], y)


def test_fad_inf_removes_the_small_sample_bias_and_the_too_few_clips_rule():
    fads, infs = [], []
    for seed in range(3):
        rng = np.random.default_rng(seed)
        ref, gen = rng.standard_normal((1000, 8)), rng.standard_normal((200, 8))
        fads.append(metrics.fad(ref, gen))
        inf, slope, fractions, values = metrics.fad_inf_fit(ref, gen, seed=seed)
        assert fractions[0] == 0.5 and fractions[-1] == 1 and len(fractions) == 15
        assert values[-1] == pytest.approx(fads[-1])  # the whole sets are the last subsets
        np.testing.assert_allclose(np.polyfit(1 / fractions, values, 1), [slope, inf], rtol=1e-9)
        assert slope > 0  # fewer clips, larger FAD
        infs.append(inf)
    assert np.mean(np.abs(infs)) < 0.3 * np.mean(fads)  # FAD's bias: ~0.15 here; FAD-inf's: ~0.02
    rng = np.random.default_rng(5)
    ref, gen = rng.standard_normal((1000, 8)), rng.standard_normal((400, 8)) + 0.5
    assert metrics.fad_inf(ref, gen) == pytest.approx(8 * 0.25, abs=0.4)  # |shift|^2
    # both sets as small (the eval's case): FAD's bias is large, FAD-inf's small
    ref, gen = rng.standard_normal((300, 32)), rng.standard_normal((300, 32)) + 1 / np.sqrt(32)
    assert metrics.fad(ref, gen) > 2.5 and abs(metrics.fad_inf(ref, gen) - 1) < 0.5  # |shift|^2 = 1
    ref, gen = rng.standard_normal((1000, 8)), rng.standard_normal((400, 8)) + 0.5
    # the rule: FAD > dim points a side, FAD-inf >= 2 (dim + 1) a side, KAD >= 2 a side
    d = metrics.audio_distances(ref[:8], gen[:8])
    assert d["fad"] is None and d["fad_inf"] is None and d["kad"] > 0
    assert set(d["too_few_clips"]) == {"fad", "fad_inf"}
    assert all(r.startswith(metrics.TOO_FEW_CLIPS) for r in d["too_few_clips"].values())
    assert (d["n_reference"], d["n_generated"], d["dim"]) == (8, 8, 8)
    d = metrics.audio_distances(ref[:17], gen[:40])
    assert d["fad"] is not None and d["fad_inf"] is None
    d = metrics.audio_distances(ref[:18], gen[:18])
    assert None not in (d["fad"], d["fad_inf"], d["kad"]) and d["too_few_clips"] == {}
    d = metrics.audio_distances(ref[:1], gen[:1])
    assert d["fad"] is d["fad_inf"] is d["kad"] is None and len(d["too_few_clips"]) == 3


def test_binomial_p_and_above_chance():
    assert metrics.binomial_p(6, 6, 0.5) == pytest.approx(1 / 64)
    assert metrics.binomial_p(7, 10, 0.5) == pytest.approx((120 + 45 + 10 + 1) / 1024)
    assert metrics.binomial_p(0, 10, 0.3) == pytest.approx(1.0)
    for k, n, c in ((3, 12, 1 / 3), (30, 40, 0.5), (17, 20, 0.25)):
        assert metrics.binomial_p(k, n, c) == pytest.approx(stats.binom.sf(k - 1, n, c), rel=1e-9)
    figures = {
        # slightly above chance on few captions: not significant
        "drums": {"n": 10, "accuracy": 0.6, "chance": 0.5, "shuffled_chance": 0.5},
        # all 6 right: p = 1/64 > 0.01, still not significant
        "mode": {"n": 6, "accuracy": 1.0, "chance": 0.5, "shuffled_chance": 0.5},
        "register": {"n": 40, "accuracy": 0.75, "chance": 1 / 3, "shuffled_chance": 0.34},
        # captions mostly one class and music always that class: the shuffled chance is the null
        "loudness": {"n": 30, "accuracy": 0.8, "chance": 1 / 3, "shuffled_chance": 0.8},
    }
    out = metrics.with_significance(figures)
    assert [out[a]["above_chance"] for a in figures] == [False, False, True, False]
    assert out["drums"]["successes"] == 6 and out["drums"]["p"] == pytest.approx(stats.binom.sf(5, 10, 0.5))
    assert out["loudness"]["null_chance"] == 0.8 and out["register"]["null_chance"] == 0.34
    assert out["register"]["p"] < metrics.SIGNIFICANCE_LEVEL == 0.01
    assert "6/10" in metrics.adherence_line("drums", out["drums"]) and "not significant" in metrics.adherence_line(
        "drums", out["drums"]
    )
    with pytest.raises(ValueError):
        metrics.binomial_p(11, 10, 0.5)
