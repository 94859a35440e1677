"""FAD / KLD / MCC maths against closed forms and scipy."""

import numpy as np
import pytest
from scipy import spatial, stats

from musiclm_jax.evaluation import metrics


def _w2_symmetric(mean_a, cov_a, mean_b, cov_b):
    """Frechet (2-Wasserstein^2) distance via the symmetric form tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2),
    with square roots from eigendecompositions (independent of the scipy.linalg.sqrtm path)."""

    def sqrt_psd(m):
        w, v = np.linalg.eigh(m)
        return (v * np.sqrt(np.clip(w, 0, None))) @ v.T

    root_a = sqrt_psd(cov_a)
    cross = sqrt_psd(root_a @ cov_b @ root_a)
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
    # fewer clips than dimensions: singular covariances still give a finite distance
    assert np.isfinite(metrics.fad(rng.standard_normal((5, 16)), rng.standard_normal((5, 16))))
    with pytest.raises(ValueError, match="clips >= 2"):
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
