"""Text-to-music metrics (MusicLM section 5.1): FAD, KLD and MuLan cycle consistency (MCC).

    fad(reference_embeddings, generated_embeddings)      Frechet distance of two Gaussian fits
    kld(reference_probs, generated_probs)                 mean KL(reference || generated) per clip pair
    mcc(text_embeddings, audio_embeddings)                mean cosine of each text with its audio

Pure numpy / scipy on embeddings and label distributions: the models that produce them are
pluggable. The Frechet distance follows the FAD / FID reference
(Kilgour et al. 2019; Heusel et al. 2017): ||mu_r - mu_g||^2 + tr(S_r + S_g - 2 (S_r S_g)^1/2),
with the matrix square root from scipy and a small diagonal offset when the product is
singular (fewer clips than dimensions).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Gaussian(NamedTuple):
    """Mean [D] and covariance [D, D] of embeddings (the sample covariance, ddof=1, as FAD uses)."""

    mean: np.ndarray
    cov: np.ndarray


def gaussian_fit(embeddings: np.ndarray) -> Gaussian:
    x = np.asarray(embeddings, np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"a Gaussian fit needs embeddings [clips >= 2, dim], got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("embeddings contain NaN or Inf")
    return Gaussian(x.mean(axis=0), np.cov(x, rowvar=False, ddof=1).reshape(x.shape[1], x.shape[1]))


def frechet_distance(a: Gaussian, b: Gaussian, eps: float = 1e-6) -> float:
    """Frechet distance between N(a.mean, a.cov) and N(b.mean, b.cov)."""
    from scipy import linalg

    if a.mean.shape != b.mean.shape:
        raise ValueError(f"embedding dimensions differ: {a.mean.shape} vs {b.mean.shape}")
    diff = a.mean - b.mean
    covmean, _ = linalg.sqrtm(a.cov @ b.cov, disp=False)
    if not np.all(np.isfinite(covmean)):  # singular product: offset both diagonals (as FID does)
        offset = eps * np.eye(a.cov.shape[0])
        covmean = linalg.sqrtm((a.cov + offset) @ (b.cov + offset))
    covmean = np.real(covmean)  # rounding leaves tiny imaginary parts
    value = float(diff @ diff + np.trace(a.cov) + np.trace(b.cov) - 2.0 * np.trace(covmean))
    return max(value, 0.0)


def fad(reference: np.ndarray, generated: np.ndarray) -> float:
    """Frechet Audio Distance between two sets of clip embeddings [clips, D]."""
    return frechet_distance(gaussian_fit(reference), gaussian_fit(generated))


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
