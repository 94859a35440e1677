"""Semantic tokens: a trained w2v-BERT, frozen, plus k-means of one MLM-module layer's output.

    tok = SemanticTokenizer.from_model_dir("/runs/w2v_bert")     # model.json, checkpoint, kmeans/
    tokens = tok.tokenize(waveforms)    # int32 [batch, frames] at 25 Hz (paper config)

Any length: clips are zero-padded to a whole number of feature frames and the tokens are
trimmed back to ceil(samples / samples_per_frame). A list of clips of different lengths is
tokenized clip by clip (padding them to one length would let the padding attend into the
real frames); an array [B, T] in one call.

The k-means (`fit_semantic_kmeans`, `musiclm fit_semantic_kmeans`) streams the chosen layer's
frame embeddings of a task's clips into mini-batch k-means (tokenizers/kmeans.py) and lives
in MODEL_DIR/kmeans/ (kmeans.npz + kmeans.json, no pickle).
"""

from __future__ import annotations

import math
import time
from typing import Iterator, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from musiclm_jax import fileio, model_io
from musiclm_jax.data import synthetic
from musiclm_jax.models.w2v_bert import W2vBert
from musiclm_jax.tokenizers import kmeans
from musiclm_jax.tokenizers.clips import task_clips
from musiclm_jax.training.summaries import log

KMEANS_DIR = "kmeans"


class W2vBertEmbedder:
    """Frame embeddings [frames, D] of one MLM-module layer, for clips of any length.

    Args:
      model: the w2v-BERT.
      params: its parameters.
      layer: the MLM-module layer (1-based) whose output is embedded; None for the config's
        `embedding_layer` (the 7th in the paper config).
    """

    def __init__(self, model: W2vBert, params, layer: Optional[int] = None):
        self.model, self.params = model, params
        self.layer = int(layer or model.config.embedding_layer)
        self._embed = jax.jit(lambda p, a: model.embeddings(p, a, self.layer))

    @property
    def sample_rate(self) -> int:
        return self.model.config.sample_rate

    @property
    def samples_per_frame(self) -> int:
        return 4 * self.model.config.hop_length  # two stride-2 convs over the mel frames

    def _frames(self, num_samples: int) -> int:
        return math.ceil(num_samples / self.samples_per_frame)

    def embed_batch(self, waveforms: np.ndarray) -> np.ndarray:
        """[B, T] float -> float32 [B, ceil(T / samples_per_frame), D].

        Args:
          waveforms: float [B, T] at `sample_rate`, zero-padded to whole frames plus one (so the
            last real frame's window is complete).
        Returns:
          float32 [B, ceil(T / samples_per_frame), D] (D = the MLM module's d_model).
        Raises:
          ValueError: not [B, T], or T == 0.
        """
        x = np.asarray(waveforms, np.float32)
        if x.ndim != 2 or x.shape[1] == 0:
            raise ValueError(f"expected waveforms [batch, samples], got shape {x.shape}")
        frames = self._frames(x.shape[1])
        # one extra frame of padding: the last real frame's window is complete
        x = np.pad(x, ((0, 0), (0, (frames + 1) * self.samples_per_frame - x.shape[1])))
        return np.asarray(self._embed(self.params, jnp.asarray(x)), np.float32)[:, :frames]

    def embed_clips(self, clips: Sequence[np.ndarray] | np.ndarray) -> list[np.ndarray]:
        """Frame embeddings of each clip.

        Args:
          clips: at `sample_rate`: a [B, T] array (one call), a list of 1-D clips of any length
            (one call each, so no padding attends into a shorter clip's frames), or one 1-D clip.
        Returns:
          A list with one float32 [ceil(T_i / samples_per_frame), D] per clip.
        Raises:
          ValueError: a clip that is empty or not 1-D.
        """
        if isinstance(clips, np.ndarray) and clips.ndim == 2:
            return list(self.embed_batch(clips))
        if isinstance(clips, np.ndarray) and clips.ndim == 1:
            clips = [clips]
        out = []
        for i, clip in enumerate(clips):
            clip = np.asarray(clip, np.float32)
            if clip.ndim != 1 or clip.size == 0:
                raise ValueError(f"clip {i}: expected a non-empty 1-D waveform, got shape {clip.shape}")
            out.append(self.embed_batch(clip[None])[0])
        return out


class SemanticTokenizer(W2vBertEmbedder):
    """Semantic tokens: each frame embedding's nearest k-means centroid.

    Args:
      model: the w2v-BERT.
      params: its parameters.
      centroids: float [K, d_model] k-means centroids of `layer`'s frames (K = codebook_size).
      layer: the layer the k-means was fitted on; None for the config's `embedding_layer`.
    Raises:
      ValueError: the centroids' dim is not the model's d_model.
    """

    def __init__(self, model: W2vBert, params, centroids: np.ndarray, layer: Optional[int] = None):
        super().__init__(model, params, layer)
        if centroids.shape[1] != model.config.d_model:
            raise ValueError(
                f"k-means centroids have dim {centroids.shape[1]}, w2v-BERT d_model is {model.config.d_model}"
            )
        self.centroids = np.asarray(centroids, np.float32)

    @classmethod
    def from_model_dir(
        cls, model_dir: str, *, step: Optional[int] = None, kmeans_dir: Optional[str] = None
    ) -> "SemanticTokenizer":
        """The w2v-BERT of a model directory with its fitted k-means (and the layer it was fitted on).

        Args:
          model_dir: a W2vBert `musiclm train` directory or params-only export.
          step: the checkpoint step; None for the latest.
          kmeans_dir: the k-means' directory (kmeans.npz, kmeans.json); None for model_dir/kmeans.
        Returns:
          The tokenizer, embedding the layer kmeans.json names (else the config's `embedding_layer`).
        Raises:
          FileNotFoundError: no model.json, or no kmeans.npz (fit it first: `fit_semantic_kmeans`).
          ValueError: model.json names another kind of model, kmeans.npz or kmeans.json is
            unreadable, or the centroids do not fit the model.
          ExportError: `model_dir` is an export whose files changed.
        """
        model, params = model_io.load(model_dir, step, kind="W2vBert")
        centroids, info = kmeans.load_kmeans(kmeans_dir or fileio.join(model_dir, KMEANS_DIR))
        return cls(model, params, centroids, info.get("layer"))

    @property
    def codebook_size(self) -> int:
        return int(self.centroids.shape[0])

    def tokenize(self, waveforms: Sequence[np.ndarray] | np.ndarray) -> np.ndarray | list[np.ndarray]:
        """int32 [B, frames] for an array [B, T]; a list of int32 [frames_i] for a list of clips.

        Args:
          waveforms: as `embed_clips`.
        Returns:
          For an array [B, T], int32 [B, ceil(T / samples_per_frame)]; else a list of int32
          [frames_i], one per clip. Tokens lie in [0, codebook_size).
        Raises:
          ValueError: as `embed_clips`.
        """
        embs = self.embed_clips(waveforms)
        tokens = [kmeans.assign(self.centroids, e) for e in embs]
        if isinstance(waveforms, np.ndarray) and waveforms.ndim == 2:
            return np.stack(tokens)
        return tokens


def _point_batches(embedder: W2vBertEmbedder, clips: Iterator[np.ndarray], batch_points: int, log) -> Iterator:
    """Frame embeddings of the clips, regrouped into [batch_points, D] batches (the last partial
    batch is dropped unless it is the only one)."""
    buffer, held, n_clips, t0 = [], 0, 0, time.perf_counter()
    emitted = False
    for clip in clips:
        e = embedder.embed_clips([clip])[0]
        buffer.append(e)
        held += len(e)
        n_clips += 1
        while held >= batch_points:
            x = np.concatenate(buffer)
            yield x[:batch_points]
            emitted = True
            buffer, held = [x[batch_points:]], len(x) - batch_points
            log("k-means: %d clips embedded (%.1f clips/s)", n_clips, n_clips / (time.perf_counter() - t0))
    if not emitted and held:
        yield np.concatenate(buffer)


def fit_semantic_kmeans(
    *,
    model_dir: str,
    task: str,
    num_clusters: int = 1024,
    layer: Optional[int] = None,
    split: str = "train",
    num_examples: Optional[int] = 1000,
    batch_points: int = 4096,
    eval_split: Optional[str] = "validation",
    num_eval_examples: int = 50,
    output_dir: Optional[str] = None,
    seed: int = 0,
    step: Optional[int] = None,
) -> dict:
    """Fits k-means (mini-batch, k-means++ seeded) on the frame embeddings of `layer` (default the
    model's `embedding_layer`) of up to `num_examples` clips of `task`, reports the mean squared
    distance to the nearest centroid on train and held-out frames, saves MODEL_DIR/kmeans/.

    Args:
      model_dir: w2v-BERT's `musiclm train` directory.
      task: a registered raw-audio seqio task; its clips are embedded whole.
      num_clusters: k, the number of semantic tokens.
      layer: the MLM-module layer (1-based) whose frames are clustered; None for the model's
        `embedding_layer`. Saved in kmeans.json, so the tokenizer embeds the same layer.
      split: the split fitted on.
      num_examples: at most this many clips of `split`; None for all.
      batch_points: frames per mini-batch step (the last partial batch is dropped unless it is the
        only one); the first batch seeds k-means++, so it needs at least `num_clusters` frames.
      eval_split: a held-out split the distance and the clusters used are measured on; None for none.
      num_eval_examples: at most this many clips of `eval_split` (their frames held in memory at once).
      output_dir: where kmeans.npz and kmeans.json are written; None for MODEL_DIR/kmeans.
      seed: seeds the k-means++ initialisation.
      step: w2v-BERT's checkpoint step; None for the latest.
    Returns:
      The info dict (also in kmeans.json, beside k, dim, num_points, num_steps, inertia_history):
      task, split, layer, num_clusters, model_dir (absolute), seed, train_mean_sq_distance (the
      mean of the last 5 steps' batch mean squared distances, each before its update) and, with
      `eval_split`, held_out_mean_sq_distance and held_out_clusters_used.
    Raises:
      ValueError: an unknown task, a split with no clips, or a first batch of fewer than
        `num_clusters` frames.
    """
    model, params = model_io.load(model_dir, step, kind="W2vBert")
    embedder = W2vBertEmbedder(model, params, layer)
    output_dir = output_dir or fileio.join(model_dir, KMEANS_DIR)
    batches = _point_batches(embedder, task_clips(task, split, num_examples), batch_points, log)
    state = kmeans.fit_minibatch_kmeans(batches, num_clusters, seed=seed)
    info = {
        "task": task,
        "split": split,
        "layer": embedder.layer,
        "num_clusters": num_clusters,
        "model_dir": fileio.resolve(model_dir),
        "seed": seed,
        "train_mean_sq_distance": float(np.mean(state.inertia_history[-5:])),
    }
    if eval_split:
        held_out = np.concatenate(embedder.embed_clips(list(task_clips(task, eval_split, num_eval_examples))))
        info["held_out_mean_sq_distance"] = kmeans.inertia(state.centroids, held_out) / len(held_out)
        used = np.bincount(kmeans.assign(state.centroids, held_out), minlength=num_clusters)
        info["held_out_clusters_used"] = int(np.sum(used > 0))
    kmeans.save_kmeans(output_dir, state, info)
    log(
        "semantic k-means (%d clusters, layer %d, %d points in %d steps) saved to %s: %s",
        num_clusters,
        embedder.layer,
        state.num_points,
        state.num_steps,
        output_dir,
        {k: v for k, v in info.items() if "distance" in k or "used" in k},
    )
    return info


def token_label_agreement(tokens: Sequence[np.ndarray], labels: Sequence[np.ndarray]) -> dict[str, float]:
    """How much frame tokens say about frame labels: purity (each token votes its majority label)
    and normalised mutual information (arithmetic normalisation, as scikit-learn's default).
    `tokens[i]`, `labels[i]`: int arrays of one clip's frames (label < 0 = unlabelled, skipped)."""
    t = np.concatenate([np.asarray(x, np.int64) for x in tokens])
    y = np.concatenate([np.asarray(x, np.int64) for x in labels])
    keep = y >= 0
    t, y = t[keep], y[keep]
    if t.size == 0:
        raise ValueError("no labelled frames")
    _, t = np.unique(t, return_inverse=True)
    _, y = np.unique(y, return_inverse=True)
    joint = np.zeros((t.max() + 1, y.max() + 1))
    np.add.at(joint, (t, y), 1.0)
    purity = joint.max(axis=1).sum() / t.size
    p = joint / t.size
    pt, py = p.sum(1, keepdims=True), p.sum(0, keepdims=True)
    nz = p > 0
    mi = float(np.sum(p[nz] * np.log(p[nz] / (pt @ py)[nz])))
    h = lambda q: float(-np.sum(q[q > 0] * np.log(q[q > 0])))  # noqa: E731
    denom = 0.5 * (h(pt) + h(py))
    return {"purity": float(purity), "nmi": mi / denom if denom > 0 else 0.0}


def synthetic_frame_labels(example, num_frames: int, frame_rate: float) -> dict[str, np.ndarray]:
    """Per-frame labels of a synthetic example (data/synthetic.py) at the token frame rate:
    the sounding melody note's pitch class and MIDI pitch (-1 in rests) at each frame's centre,
    and the clip's instrument (its index in synthetic.INSTRUMENTS) on every frame."""
    if getattr(example, "score", None) is None:
        raise ValueError(f"{example.id} has no score: frame labels need a synthetic example")
    pitch = example.score.melody_pitch_at((np.arange(num_frames) + 0.5) / frame_rate)
    midi = np.where(np.isnan(pitch), -1, np.nan_to_num(pitch)).astype(np.int64)
    instrument = synthetic.INSTRUMENTS.index(example.labels["instrument"])
    return {
        "pitch_class": np.where(midi >= 0, midi % 12, -1),
        "pitch": midi,
        "instrument": np.full(num_frames, instrument, np.int64),
    }


def synthetic_token_agreement(
    tokens: Sequence[np.ndarray], examples: Sequence, frame_rate: float
) -> dict[str, dict[str, float]]:
    """`token_label_agreement` of each clip's tokens with its synthetic frame labels, per label:
    {'pitch_class': {'purity', 'nmi'}, 'pitch': ..., 'instrument': ...}."""
    labels = [synthetic_frame_labels(e, len(t), frame_rate) for t, e in zip(tokens, examples)]
    return {name: token_label_agreement(tokens, [lab[name] for lab in labels]) for name in labels[0]}
