"""Text-to-music metrics (MusicLM section 5.1): FAD, KAD, KLD, MuLan cycle consistency (MCC),
and the binomial test every adherence figure carries.

    fad(reference_embeddings, generated_embeddings)      Frechet distance of two Gaussian fits
    fad_inf(reference_embeddings, generated_embeddings)  FAD extrapolated to infinitely many clips
    kad(reference_embeddings, generated_embeddings)      kernel audio distance (unbiased MMD^2)
    audio_distances(reference, generated)                all three, None + reason where undefined
    kld(reference_probs, generated_probs)                mean KL(reference || generated) per clip pair
    mcc(text_embeddings, audio_embeddings)               mean cosine of each text with its audio
    binomial_p(successes, n, chance)                     one-sided binomial p against chance
    with_significance(adherence)                         adds n's successes, p and above_chance

Pure numpy / scipy on embeddings and label distributions: the models that produce them are
pluggable.

FAD follows Kilgour et al. 2019 / Heusel et al. 2017: ||mu_r - mu_g||^2 + tr(S_r + S_g -
2 (S_r S_g)^1/2) with the sample covariances. A covariance of n points has rank <= n - 1, so FAD
is only a number with more points than embedding dimensions on both sides; with fewer, `fad`
raises TooFewClips instead of inventing one (no diagonal offset, no clamp). FAD is biased
upwards by about c / n (Chong & Forsyth 2020); FAD-infinity (after fadtk) fits FAD of subsets
of n/2 ... n points against 1 / size and reports the intercept, subsampling both sets (fadtk:
only the generated one; see fad_inf_fit): it needs half of each set to have full rank too, i.e.
n >= 2 (D + 1) points a side.

KAD (Chung et al. 2025, "KAD: No More FAD!") is the unbiased estimate of the squared maximum
mean discrepancy with a Gaussian RBF kernel whose bandwidth is the median pairwise distance of
the reference points (as kadtk). It needs only 2 points per side at any dimension, is 0 in
expectation for two samples of one distribution (single values scatter around 0 and may be
negative) and is positive in expectation otherwise (the kernel is characteristic). Reported
unscaled (kadtk multiplies by 100 for display). The 0 holds for independent points: several
points per clip (VGGish's 0.96 s examples, musicnn's 3 s patches) are correlated within a clip,
so two sets of a few clips each of one distribution come out above 0 (measured: 0.10 for 20 vs
20 synthetic pieces of 10 s, random-weight VGGish, 10 points a clip), and KAD of a set with itself is
-2 (1 - mean off-diagonal kernel) / n, at most 0.
"""

from __future__ import annotations

from typing import Mapping, NamedTuple, Optional

import numpy as np

# `above_chance` of an adherence figure: its one-sided binomial p against chance is below this.
SIGNIFICANCE_LEVEL = 0.01
TOO_FEW_CLIPS = "too few clips"
# Points whose pairwise distances give KAD's median bandwidth (a seeded subsample above this).
_MEDIAN_POINTS = 2000


class TooFewClips(ValueError):
    """A distance that is not a number for this many points (the message says why)."""


class Gaussian(NamedTuple):
    """Mean [D] and covariance [D, D] of embeddings (the sample covariance, ddof=1, as FAD uses)."""

    mean: np.ndarray
    cov: np.ndarray


def _points(x, what: str) -> np.ndarray:
    x = np.asarray(x, np.float64)
    if x.ndim != 2:
        raise ValueError(f"{what} embeddings must be [clips, dim], got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{what} embeddings contain NaN or Inf")
    return x


def _pair(reference, generated) -> tuple[np.ndarray, np.ndarray]:
    x, y = _points(reference, "reference"), _points(generated, "generated")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"embedding dimensions differ: {x.shape[1]} vs {y.shape[1]}")
    return x, y


def gaussian_fit(embeddings: np.ndarray) -> Gaussian:
    x = np.asarray(embeddings, np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"a Gaussian fit needs embeddings [clips >= 2, dim], got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("embeddings contain NaN or Inf")
    return Gaussian(x.mean(axis=0), np.cov(x, rowvar=False, ddof=1).reshape(x.shape[1], x.shape[1]))


def _sqrt_psd(m: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((m + m.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(a: Gaussian, b: Gaussian) -> float:
    """Frechet distance between N(a.mean, a.cov) and N(b.mean, b.cov), with
    tr((S_a S_b)^1/2) = sum of the square roots of the eigenvalues of S_a^1/2 S_b S_a^1/2 (a
    matrix similar to S_a S_b, symmetric positive semi-definite): symmetric eigendecompositions
    only, exact for singular covariances too, so no diagonal offset; eigenvalues rounded below 0
    count as 0, and a total rounded below 0 (~1e-12 of the traces) reads as 0."""
    if a.mean.shape != b.mean.shape:
        raise ValueError(f"embedding dimensions differ: {a.mean.shape} vs {b.mean.shape}")
    diff = a.mean - b.mean
    root = _sqrt_psd(a.cov)
    cross = np.linalg.eigvalsh(root @ b.cov @ root)
    value = float(diff @ diff + np.trace(a.cov) + np.trace(b.cov) - 2.0 * np.sum(np.sqrt(np.clip(cross, 0.0, None))))
    return max(value, 0.0)


def fad_too_few(n_reference: int, n_generated: int, dim: int) -> Optional[str]:
    """Why FAD of this many points is not a number, or None when it is."""
    if min(n_reference, n_generated) <= dim:
        return (
            f"{TOO_FEW_CLIPS}: FAD needs more points than embedding dimensions on each side "
            f"(> {dim}); got {n_reference} reference and {n_generated} generated"
        )
    return None


def fad_inf_too_few(n_reference: int, n_generated: int, dim: int) -> Optional[str]:
    """Why FAD-infinity of this many points is not a number, or None when it is."""
    if min(n_reference, n_generated) < 2 * (dim + 1):
        return (
            f"{TOO_FEW_CLIPS}: FAD-inf needs >= {2 * (dim + 1)} points on each side (half of each set "
            f"must exceed the {dim} dimensions); got {n_reference} reference and {n_generated} generated"
        )
    return None


def kad_too_few(n_reference: int, n_generated: int) -> Optional[str]:
    """Why KAD of this many points is not a number, or None when it is."""
    if min(n_reference, n_generated) < 2:
        return (
            f"{TOO_FEW_CLIPS}: KAD needs >= 2 points on each side; got {n_reference} reference and "
            f"{n_generated} generated"
        )
    return None


def fad(reference: np.ndarray, generated: np.ndarray) -> float:
    """Frechet Audio Distance between two sets of clip embeddings [clips, D]. Raises TooFewClips
    unless both sets have more than D points."""
    x, y = _pair(reference, generated)
    reason = fad_too_few(len(x), len(y), x.shape[1])
    if reason:
        raise TooFewClips(reason)
    return frechet_distance(gaussian_fit(x), gaussian_fit(y))


def fad_inf_fit(
    reference: np.ndarray, generated: np.ndarray, *, num_sizes: int = 15, seed: int = 0
) -> tuple[float, float, np.ndarray, np.ndarray]:
    """(FAD-inf, slope, fractions, their FADs): FAD of random subsets (without replacement) of
    both sets, the same fraction f of each, f evenly from 1/2 to 1, fit by least squares as
    intercept + slope / f. FAD's small-sample bias is about c_r / n_r + c_g / n_g, so the
    intercept extrapolates both sets to infinitely many points. fadtk subsamples only the
    generated set (its reference statistics come from a large background set); here the
    references are as few as the generations, and their bias would stay (measured on 1000 vs
    1000 draws of one 128-d Gaussian: FAD 8.3, generated-only FAD-inf 3.9, both-sides FAD-inf
    -0.3). The intercept is an extrapolation: near 0 it may come out slightly negative.
    Raises TooFewClips (see fad_inf_too_few)."""
    x, y = _pair(reference, generated)
    reason = fad_inf_too_few(len(x), len(y), x.shape[1])
    if reason:
        raise TooFewClips(reason)
    rng = np.random.default_rng(seed)
    fractions = np.linspace(0.5, 1.0, num_sizes)
    values = np.array(
        [
            frechet_distance(
                gaussian_fit(x[rng.choice(len(x), int(round(f * len(x))), replace=False)]),
                gaussian_fit(y[rng.choice(len(y), int(round(f * len(y))), replace=False)]),
            )
            for f in fractions
        ]
    )
    slope, intercept = np.polyfit(1.0 / fractions, values, 1)
    return float(intercept), float(slope), fractions, values


def fad_inf(reference: np.ndarray, generated: np.ndarray, *, num_sizes: int = 15, seed: int = 0) -> float:
    """FAD extrapolated to infinitely many points on both sides (see fad_inf_fit)."""
    return fad_inf_fit(reference, generated, num_sizes=num_sizes, seed=seed)[0]


def _sq_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = np.sum(a**2, 1)[:, None] + np.sum(b**2, 1)[None, :] - 2.0 * a @ b.T
    return np.maximum(d, 0.0)


def median_bandwidth(points: np.ndarray, *, seed: int = 0) -> float:
    """Median pairwise Euclidean distance of `points` [n, D] (of a seeded subsample of 2000 when
    there are more); 0 when they are all equal."""
    x = _points(points, "bandwidth")
    if len(x) > _MEDIAN_POINTS:
        x = x[np.random.default_rng(seed).choice(len(x), _MEDIAN_POINTS, replace=False)]
    i, j = np.triu_indices(len(x), k=1)
    return float(np.median(np.sqrt(_sq_distances(x, x)[i, j]))) if len(i) else 0.0


def _kernel_mean(a: np.ndarray, b: np.ndarray, gamma: float, *, same: bool, block: int = 2048) -> float:
    """Mean of exp(-gamma |a_i - b_j|^2) over all pairs (over i != j when `same`), in blocks."""
    total = 0.0
    for start in range(0, len(a), block):
        k = np.exp(-gamma * _sq_distances(a[start : start + block], b))
        if same:
            rows = np.arange(start, min(start + block, len(a)))
            k[rows - start, rows] = 0.0
        total += float(k.sum())
    pairs = len(a) * (len(a) - 1) if same else len(a) * len(b)
    return total / pairs


def kad(reference: np.ndarray, generated: np.ndarray, *, bandwidth: Optional[float] = None) -> float:
    """Kernel audio distance: the unbiased MMD^2 between two sets of embeddings [n, D] and [m, D]
    with k(a, b) = exp(-|a - b|^2 / (2 bandwidth^2)),

        mean_{i != j} k(x_i, x_j) + mean_{i != j} k(y_i, y_j) - 2 mean_{i, j} k(x_i, y_j).

    `bandwidth` defaults to the median pairwise distance of the reference points (of all points
    when those are all equal). Raises TooFewClips with fewer than 2 points on a side."""
    x, y = _pair(reference, generated)
    reason = kad_too_few(len(x), len(y))
    if reason:
        raise TooFewClips(reason)
    if bandwidth is None:
        bandwidth = median_bandwidth(x) or median_bandwidth(np.concatenate([x, y]))
        if bandwidth == 0.0:  # every point equal: the same distribution
            return 0.0
    if not bandwidth > 0:
        raise ValueError(f"the KAD bandwidth must be > 0, got {bandwidth}")
    gamma = 1.0 / (2.0 * bandwidth**2)
    return (
        _kernel_mean(x, x, gamma, same=True)
        + _kernel_mean(y, y, gamma, same=True)
        - 2.0 * _kernel_mean(x, y, gamma, same=False)
    )


def audio_distances(reference: np.ndarray, generated: np.ndarray, *, seed: int = 0) -> dict:
    """FAD, FAD-inf and KAD of two sets of embeddings, JSON-able:
    {fad, fad_inf, kad: float or None, n_reference, n_generated, dim,
     too_few_clips: {metric: the reason it is None}} (too_few_clips empty when all are numbers)."""
    x, y = _pair(reference, generated)
    n_ref, n_gen, dim = len(x), len(y), x.shape[1]
    out: dict = {"n_reference": n_ref, "n_generated": n_gen, "dim": dim, "too_few_clips": {}}
    for name, reason, compute in (
        ("fad", fad_too_few(n_ref, n_gen, dim), lambda: fad(x, y)),
        ("fad_inf", fad_inf_too_few(n_ref, n_gen, dim), lambda: fad_inf(x, y, seed=seed)),
        ("kad", kad_too_few(n_ref, n_gen), lambda: kad(x, y)),
    ):
        out[name] = None if reason else compute()
        if reason:
            out["too_few_clips"][name] = reason
    return out


def kld(reference: np.ndarray, generated: np.ndarray, eps: float = 1e-8) -> float:
    """Mean over clip pairs of KL(reference_i || generated_i) between a classifier's label
    distributions [clips, labels] (rows sum to 1), as MusicLM reports it: reference i is the
    clip whose caption generated clip i."""
    p, q = np.asarray(reference, np.float64), np.asarray(generated, np.float64)
    if p.shape != q.shape or p.ndim != 2:
        raise ValueError(f"label distributions must both be [clips, labels], got {p.shape} and {q.shape}")
    if (
        np.any(p < 0)
        or np.any(q < 0)
        or not np.allclose(p.sum(1), 1, atol=1e-4)
        or not np.allclose(q.sum(1), 1, atol=1e-4)
    ):
        raise ValueError("label distributions must be non-negative rows summing to 1")
    p, q = np.clip(p, eps, None), np.clip(q, eps, None)
    p, q = p / p.sum(1, keepdims=True), q / q.sum(1, keepdims=True)
    return float(np.mean(np.sum(p * (np.log(p) - np.log(q)), axis=1)))


def pair_cosines(text_embeddings: np.ndarray, audio_embeddings: np.ndarray) -> np.ndarray:
    """Cosine of each caption's text embedding with the audio embedding of its clip: [clips]."""
    t, a = np.asarray(text_embeddings, np.float64), np.asarray(audio_embeddings, np.float64)
    if t.shape != a.shape or t.ndim != 2:
        raise ValueError(f"text and audio embeddings must both be [clips, D], got {t.shape} and {a.shape}")
    t = t / np.linalg.norm(t, axis=1, keepdims=True)
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    return np.sum(t * a, axis=1)


def mcc(text_embeddings: np.ndarray, audio_embeddings: np.ndarray) -> float:
    """MuLan cycle consistency: the mean cosine between each caption's text embedding and the
    audio embedding of the music generated from it."""
    return float(np.mean(pair_cosines(text_embeddings, audio_embeddings)))


def binomial_p(successes: int, n: int, chance: float) -> float:
    """One-sided binomial p-value: the probability of >= `successes` hits in `n` trials that
    each hit with probability `chance` (scipy.stats.binomtest, alternative='greater')."""
    from scipy.stats import binomtest

    if n < 1 or not 0 <= successes <= n or not 0 < chance < 1:
        raise ValueError(
            f"binomial_p needs n >= 1, 0 <= successes <= n, 0 < chance < 1; got {successes}, {n}, {chance}"
        )
    return float(binomtest(int(successes), int(n), float(chance), alternative="greater").pvalue)


def with_significance(adherence: Mapping[str, Mapping], *, level: float = SIGNIFICANCE_LEVEL) -> dict:
    """Adherence figures ({attribute: {n, accuracy, chance, shuffled_chance, ...}}, as
    eval_sets.adherence gives them) with each one's binomial test: `successes`, `p` (one-sided,
    against `null_chance`: the larger of uniform and shuffled chance, so that captions that
    mostly state one class do not make a generator that ignores them look good) and
    `above_chance` (p < `level`, kept as `significance_level`; not merely accuracy > chance)."""
    out = {}
    for attr, a in adherence.items():
        n = int(a["n"])
        successes = int(round(a["accuracy"] * n))
        chance = float(max(a["chance"], a.get("shuffled_chance", 0.0)))
        # A null that always hits (captions all one class, music all that class) proves nothing.
        p = binomial_p(successes, n, chance) if chance < 1 else 1.0
        out[attr] = {
            **a,
            "successes": successes,
            "null_chance": chance,
            "p": p,
            "significance_level": level,
            "above_chance": bool(p < level),
        }
    return out


def adherence_line(attribute: str, a: Mapping) -> str:
    """One adherence figure in words: accuracy, n, chance and its binomial p."""
    verdict = "above chance" if a["above_chance"] else "not significant"
    return (
        f"{attribute} {a['accuracy']:.2f} ({a['successes']}/{a['n']}; chance {a['null_chance']:.2f}, "
        f"binomial p {a['p']:.2g}: {verdict} at p < {a.get('significance_level', SIGNIFICANCE_LEVEL):g})"
    )
