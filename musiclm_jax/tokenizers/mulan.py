"""MuLan tokens: a trained MuLan, frozen, plus an RVQ fitted on its audio embeddings.

    tok = MuLanTokenizer.from_model_dir("/runs/mulan")     # model.json, checkpoint, vocab, RVQ
    tok.audio_tokens(waveforms)      # int32 [batch, 12]  (training condition M_A)
    tok.text_tokens(["a slow piano melody"])                # int32 [batch, 12]  (generation M_T)
    tok.embed_audio(waveforms), tok.embed_text(texts)       # unit-norm float32 [batch, 128]

Audio is embedded as the paper does: windows of `window_seconds` every `hop_seconds` (a clip
shorter than a window is zero-padded to one), each window embedded, the mean renormalised.
Windows of all clips are run in fixed-size batches so one compiled function serves any length.

The RVQ (`fit_mulan_rvq`, `musiclm fit_mulan_rvq`) is k-means per level on the residuals of
audio embeddings of a task's clips (nn/quantizer.kmeans_init: k-means++ then Lloyd), then
frozen; it lives in MODEL_DIR/mulan_rvq/ as codebooks.npz (no pickle) + rvq.json. Every
directory may be an object-store URL (gs://...): files go through `musiclm_jax.fileio`.
"""

from __future__ import annotations

import atexit
import io
import json
import shutil
import tempfile
import time
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from musiclm_jax import fileio, model_io
from musiclm_jax.models.mulan import MuLan, cycle_consistency, window_starts
from musiclm_jax.models.soundstream import eval_levels
from musiclm_jax.nn import quantizer
from musiclm_jax.tokenizers.clips import task_clips
from musiclm_jax.training.summaries import log

RVQ_DIR = "mulan_rvq"
VOCAB_PATH = "text_vocab/captions.model"


def clip_embeddings(window_embeddings: Sequence[np.ndarray]) -> np.ndarray:
    """Unit-norm [clips, D]: each clip's window embeddings averaged (MuLan's clip embedding)."""
    sums = np.stack([np.sum(w, axis=0, dtype=np.float64) for w in window_embeddings])
    return (sums / np.linalg.norm(sums, axis=1, keepdims=True)).astype(np.float32)


def _local_file(path: str) -> str:
    """`path` itself if local; for a URL, a local copy kept until the process exits (SentencePiece
    reads local files only, and seqio's vocabulary may read its file again after a copy)."""
    if not fileio.is_url(path):
        return path
    directory = tempfile.mkdtemp(prefix="musiclm-vocab-")
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    local = f"{directory}/{fileio.basename(path)}"
    fileio.copy(path, local)
    return local


class MuLanEmbedder:
    """Audio and text embeddings of a frozen MuLan (no RVQ needed).

    Args:
      model: the MuLan.
      params: its parameters.
      vocabulary: the caption SentencePiece vocabulary (text_vocab/captions.model); None embeds
        audio only (text raises FileNotFoundError).
      window_batch: audio windows (or texts) per call; the last batch is padded to it, so one
        compiled function serves any number of clips.
    """

    # Where a clip's windows start (the melody tokenizer's windows cover a clip differently).
    window_starts = staticmethod(window_starts)

    def __init__(self, model: MuLan, params, vocabulary=None, *, window_batch: int = 16):
        self.model, self.params, self.vocabulary = model, params, vocabulary
        self.window_batch = int(window_batch)
        self._embed_audio = jax.jit(model.embed_audio)
        self._embed_text = jax.jit(model.embed_text) if hasattr(model, "embed_text") else None  # melody: audio only

    @classmethod
    def from_model_dir(cls, model_dir: str, *, step: Optional[int] = None, **kwargs) -> "MuLanEmbedder":
        """The MuLan of a model directory, with its caption vocabulary when it has one.

        Args:
          model_dir: a MuLan `musiclm train` directory or params-only export (model.json,
            checkpoints/, and text_vocab/captions.model if text is to be embedded).
          step: the checkpoint step; None for the latest.
          **kwargs: as the constructor (`window_batch`).
        Returns:
          The embedder (without a vocabulary when `model_dir` has none).
        Raises:
          FileNotFoundError: `model_dir` has no model.json.
          ValueError: model.json names another kind of model.
          ExportError: `model_dir` is an export whose files changed.
        """
        from musiclm_jax.data.text_vocab import load_caption_vocabulary  # seqio: loaded when needed

        model, params = model_io.load(model_dir, step, kind="MuLan")
        vocab_path = model_io.artifact_path(model_dir, VOCAB_PATH)
        vocabulary = load_caption_vocabulary(_local_file(vocab_path)) if fileio.exists(vocab_path) else None
        return cls(model, params, vocabulary, **kwargs)

    @property
    def sample_rate(self) -> int:
        return self.model.config.sample_rate

    def embed_audio(self, waveforms: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
        """Unit-norm float32 [batch, D] for clips (a [B, T] array or a list of 1-D clips of any
        length): the average of the clip's window embeddings (`embed_audio_windows`).

        Args:
          waveforms: clips at `sample_rate`: a [B, T] array, a list of 1-D clips of any length, or
            one 1-D clip (a batch of one).
        Returns:
          Unit-norm float32 [batch, D] (D = the config's embed_dim, 128 in the paper config).
        Raises:
          ValueError: no clip, or a clip that is empty or not 1-D.
        """
        return clip_embeddings(self.embed_audio_windows(waveforms))

    def embed_audio_windows(self, waveforms: Sequence[np.ndarray] | np.ndarray) -> list[np.ndarray]:
        """Per clip, unit-norm float32 [windows, D]: windows of `window_seconds` every
        `hop_seconds` from the start (the last one zero-padded), as `models.mulan.window_starts`.

        Args:
          waveforms: as `embed_audio`.
        Returns:
          A list with one unit-norm float32 [windows, D] per clip (a clip shorter than a window has one).
        Raises:
          ValueError: no clip, or a clip that is empty or not 1-D.
        """
        if isinstance(waveforms, np.ndarray) and waveforms.ndim == 1:
            waveforms = waveforms[None]
        clips = [np.asarray(w, np.float32) for w in waveforms]
        if not clips:
            raise ValueError("embed_audio needs at least one clip")
        c = self.model.config
        windows, counts = [], []
        for i, clip in enumerate(clips):
            if clip.ndim != 1 or clip.size == 0:
                raise ValueError(f"clip {i}: expected a non-empty 1-D waveform, got shape {clip.shape}")
            starts = self.window_starts(clip.size, c.window_samples, c.hop_samples)
            for start in starts:
                w = clip[start : start + c.window_samples]
                windows.append(np.pad(w, (0, c.window_samples - w.size)))
            counts.append(len(starts))
        embs = self._run_in_batches(np.stack(windows), self._embed_audio)
        return np.split(embs, np.cumsum(counts)[:-1])

    def text_ids(self, texts: Sequence[str]) -> np.ndarray:
        """int32 [batch, max_text_length] SentencePiece ids, -1 padded (longer texts are cut).

        Args:
          texts: captions (one str is a batch of one).
        Returns:
          int32 [batch, max_text_length] ids, -1 after each text's end.
        Raises:
          FileNotFoundError: this MuLan has no caption vocabulary.
          ValueError: an empty (or non-str) text.
        """
        if self.vocabulary is None:
            raise FileNotFoundError(f"this MuLan has no caption vocabulary ({VOCAB_PATH} in its model dir)")
        if isinstance(texts, str):
            texts = [texts]
        length = self.model.config.max_text_length
        out = np.full((len(texts), length), -1, np.int32)
        for i, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"text {i} is empty: MuLan needs a description")
            ids = list(self.vocabulary.encode(text))[:length]
            out[i, : len(ids)] = ids
        return out

    def embed_text(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-norm float32 [batch, D] for captions.

        Args:
          texts: captions (one str is a batch of one).
        Returns:
          Unit-norm float32 [batch, D].
        Raises:
          FileNotFoundError, ValueError: as `text_ids`.
        """
        return self._run_in_batches(self.text_ids(texts), self._embed_text)

    def _run_in_batches(self, x: np.ndarray, fn) -> np.ndarray:
        n, b = len(x), self.window_batch
        pad = (-n) % b
        x = np.concatenate([x, np.repeat(x[:1], pad, axis=0)]) if pad else x  # fixed shape: one compile
        outs = [np.asarray(fn(self.params, jnp.asarray(x[i : i + b]))) for i in range(0, len(x), b)]
        return np.concatenate(outs)[:n]


class MuLanTokenizer(MuLanEmbedder):
    """MuLan embeddings quantized by the frozen RVQ: 12 tokens per clip or text.

    Args:
      model: as MuLanEmbedder.
      params: as MuLanEmbedder.
      vocabulary: as MuLanEmbedder.
      codebooks: the RVQ as `load_rvq` returns it (embed [levels, codebook_size, D], cluster_size,
        embed_sum, initialized); its levels are the tokens per clip (12 in the paper config).
      **kwargs: as MuLanEmbedder (`window_batch`).
    """

    def __init__(self, model: MuLan, params, vocabulary, codebooks: dict, **kwargs):
        super().__init__(model, params, vocabulary, **kwargs)
        self.codebooks = {k: jnp.asarray(v) for k, v in codebooks.items()}
        self._encode = jax.jit(quantizer.encode)

    @classmethod
    def from_model_dir(
        cls, model_dir: str, *, step: Optional[int] = None, rvq_dir: Optional[str] = None, **kwargs
    ) -> "MuLanTokenizer":
        """The MuLan of a model directory with its fitted RVQ.

        Args:
          model_dir: as `MuLanEmbedder.from_model_dir`.
          step: the checkpoint step; None for the latest.
          rvq_dir: the RVQ's directory (codebooks.npz, rvq.json); None for model_dir/mulan_rvq.
          **kwargs: as the constructor (`window_batch`).
        Returns:
          The tokenizer.
        Raises:
          FileNotFoundError: no model.json, or no codebooks.npz (fit the RVQ first: `fit_mulan_rvq`).
          ValueError: model.json names another kind of model, or codebooks.npz is not a MuLan RVQ.
          ExportError: `model_dir` is an export whose files changed.
        """
        embedder = MuLanEmbedder.from_model_dir(model_dir, step=step)
        codebooks, _ = load_rvq(rvq_dir or model_io.artifact_path(model_dir, RVQ_DIR))
        return cls(embedder.model, embedder.params, embedder.vocabulary, codebooks, **kwargs)

    @property
    def num_levels(self) -> int:
        return int(self.codebooks["embed"].shape[0])

    def quantize(self, embeddings: np.ndarray) -> np.ndarray:
        """RVQ codes of embeddings.

        Args:
          embeddings: float [..., D] MuLan embeddings (audio or text).
        Returns:
          int32 [..., levels] codes.
        """
        return np.asarray(self._encode(self.codebooks, jnp.asarray(embeddings, jnp.float32)))

    def audio_tokens(self, waveforms) -> np.ndarray:
        """int32 [batch, levels] of clips of any length.

        Args:
          waveforms: as `embed_audio`.
        Returns:
          int32 [batch, levels]: the RVQ codes of each clip's embedding (the training condition M_A).
        Raises:
          ValueError: as `embed_audio`.
        """
        return self.quantize(self.embed_audio(waveforms))

    def audio_tokens_with_windows(self, waveforms) -> tuple[np.ndarray, list[np.ndarray]]:
        """(clip tokens int32 [batch, levels], per clip its windows' tokens [windows, levels]):
        one MuLan pass for the whole-clip condition and the per-window ones of long tracks.

        Args:
          waveforms: as `embed_audio`.
        Returns:
          (int32 [batch, levels] as `audio_tokens`, a list of int32 [windows, levels], one per clip).
        Raises:
          ValueError: as `embed_audio`.
        """
        windows = self.embed_audio_windows(waveforms)
        counts = np.cumsum([len(w) for w in windows])[:-1]
        window_tokens = np.split(self.quantize(np.concatenate(windows)), counts)
        return self.quantize(clip_embeddings(windows)), window_tokens

    def text_tokens(self, texts: Sequence[str]) -> np.ndarray:
        """int32 [batch, levels] of captions.

        Args:
          texts: captions (one str is a batch of one).
        Returns:
          int32 [batch, levels]: the RVQ codes of each text's embedding (the generation condition M_T).
        Raises:
          FileNotFoundError, ValueError: as `MuLanEmbedder.text_ids`.
        """
        return self.quantize(self.embed_text(texts))


# ---- the RVQ: fit, evaluate, save, load ---------------------------------------------------------


def fit_rvq(embeddings: np.ndarray, *, levels: int, codebook_size: int, iters: int = 20, seed: int = 0) -> dict:
    """k-means RVQ on embeddings [N, D]: level l clusters the residuals left by levels < l."""
    x = jnp.asarray(embeddings, jnp.float32)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"fit_rvq needs embeddings [N >= 2, D], got shape {tuple(x.shape)}")
    rng = jax.random.PRNGKey(seed)
    codebooks = quantizer.init_codebooks(rng, levels, codebook_size, x.shape[1])
    fitted = jax.jit(lambda cb, v, r: quantizer.kmeans_init(cb, v, r, iters=iters))(codebooks, x, rng)
    return {k: np.asarray(v) for k, v in fitted.items()}


def rvq_reconstruction_cosine(codebooks: dict, embeddings: np.ndarray) -> dict[int, float]:
    """Mean cosine between embeddings and their RVQ reconstruction with 1, 2, 4, ... and all levels."""
    x = jnp.asarray(embeddings, jnp.float32)
    total = int(codebooks["embed"].shape[0])
    out = {}
    for n in eval_levels(total):
        recon = quantizer.decode(codebooks, quantizer.encode(codebooks, x, n))
        out[n] = cycle_consistency(np.asarray(x), np.asarray(recon))
    return out


def save_rvq(directory: str, codebooks: dict, info: dict) -> None:
    """codebooks.npz + rvq.json, each written whole (locally to a temporary name and renamed; on an
    object store as one object), the npz first: `directory` may be a URL (gs://...)."""
    fileio.makedirs(directory)
    buffer = io.BytesIO()
    np.savez(buffer, **{k: np.asarray(v) for k, v in codebooks.items()})
    fileio.write_bytes(fileio.join(directory, "codebooks.npz"), buffer.getvalue())
    fileio.write_text(fileio.join(directory, "rvq.json"), json.dumps(info, indent=1))


def load_rvq(directory: str) -> tuple[dict, dict]:
    path = fileio.join(directory, "codebooks.npz")
    if not fileio.exists(path):
        raise FileNotFoundError(f"{path} not found: fit the RVQ first (musiclm fit_mulan_rvq / fit_melody_rvq)")
    with np.load(io.BytesIO(fileio.read_bytes(path)), allow_pickle=False) as data:
        codebooks = {k: data[k] for k in data.files}
    if set(codebooks) != {"embed", "cluster_size", "embed_sum", "initialized"} or codebooks["embed"].ndim != 3:
        raise ValueError(f"{path} is not an RVQ (arrays: {sorted(codebooks)})")
    info_path = fileio.join(directory, "rvq.json")
    info = fileio.read_json(info_path) if fileio.exists(info_path) else {}
    return codebooks, info


def fit_mulan_rvq(
    *,
    model_dir: str,
    task: str,
    split: str = "train",
    num_examples: Optional[int] = 2000,
    eval_split: Optional[str] = "validation",
    num_eval_examples: int = 200,
    output_dir: Optional[str] = None,
    seed: int = 0,
    step: Optional[int] = None,
) -> dict:
    """Embeds up to `num_examples` clips of `task` with the MuLan of `model_dir`, fits the RVQ of
    its config (rvq_levels x rvq_codebook_size), reports reconstruction cosines (train and the
    eval split) and saves to `output_dir` (default MODEL_DIR/mulan_rvq). Returns the info dict.

    Args:
      model_dir: MuLan's `musiclm train` directory.
      task: a registered raw-audio seqio task; its clips are embedded whole.
      split: the split the RVQ is fitted on.
      num_examples: at most this many clips of `split`; None for all.
      eval_split: a held-out split the reconstruction cosine is also measured on; None for none.
      num_eval_examples: at most this many clips of `eval_split`.
      output_dir: where codebooks.npz and rvq.json are written; None for MODEL_DIR/mulan_rvq.
      seed: seeds the k-means++ initialisation.
      step: MuLan's checkpoint step; None for the latest.
    Returns:
      The info dict (also rvq.json): task, split, num_examples (clips embedded), levels,
      codebook_size, seed, and reconstruction_cosine ({split: {levels used, as a str: mean cosine}}
      for 1, 2, 4, ... and all levels, on `split` and `eval_split`).
    Raises:
      ValueError: an unknown task, or a split with no clips to embed (or fewer than 2 to fit on).
    """
    embedder = MuLanEmbedder.from_model_dir(model_dir, step=step)
    return fit_embedding_rvq(
        embedder.embed_audio,
        embedder.model.config,
        task=task,
        split=split,
        num_examples=num_examples,
        eval_split=eval_split,
        num_eval_examples=num_eval_examples,
        output_dir=output_dir or fileio.join(model_dir, RVQ_DIR),
        seed=seed,
        what="MuLan",
    )


def fit_embedding_rvq(
    embed,
    config,
    *,
    task: str,
    split: str,
    num_examples: Optional[int],
    eval_split: Optional[str],
    num_eval_examples: int,
    output_dir: str,
    seed: int,
    what: str,
) -> dict:
    """The RVQ of `config` (rvq_levels, rvq_codebook_size, rvq_kmeans_iters) fitted on `embed(clips)`
    ([N, D] embeddings of a list of clips: one per clip for MuLan, one per window for the melody
    model) of `task`'s clips, evaluated, saved to `output_dir`; returns the info dict
    (`fit_mulan_rvq` documents it)."""

    def embed_split(which: str, limit: Optional[int]) -> np.ndarray:
        embs, chunk, clips = [], [], 0
        t0 = time.perf_counter()
        for clip in task_clips(task, which, limit):
            chunk.append(clip)
            if len(chunk) == 32:
                embs.append(embed(chunk))
                clips += len(chunk)
                chunk = []
                log(
                    "embedding %s/%s: %d/%s clips, %.1f clips/s",
                    task,
                    which,
                    clips,
                    limit or "all",
                    clips / (time.perf_counter() - t0),
                )
        if chunk:
            embs.append(embed(chunk))
        if not embs:
            raise ValueError(f"split {which!r} of task {task!r} has no clips to embed")
        return np.concatenate(embs)

    train = embed_split(split, num_examples)
    log(
        "%s: %d embeddings of %s/%s; fitting an RVQ of %d x %d",
        what,
        len(train),
        task,
        split,
        config.rvq_levels,
        config.rvq_codebook_size,
    )
    codebooks = fit_rvq(
        train,
        levels=config.rvq_levels,
        codebook_size=config.rvq_codebook_size,
        iters=config.rvq_kmeans_iters,
        seed=seed,
    )
    info = {
        "task": task,
        "split": split,
        "num_examples": int(len(train)),
        "levels": config.rvq_levels,
        "codebook_size": config.rvq_codebook_size,
        "seed": seed,
        "reconstruction_cosine": {split: {str(k): v for k, v in rvq_reconstruction_cosine(codebooks, train).items()}},
    }
    if eval_split:
        held_out = embed_split(eval_split, num_eval_examples)
        info["reconstruction_cosine"][eval_split] = {
            str(k): v for k, v in rvq_reconstruction_cosine(codebooks, held_out).items()
        }
    save_rvq(output_dir, codebooks, info)
    log(
        "%s RVQ saved to %s; reconstruction cosine by levels: %s",
        what,
        output_dir,
        json.dumps(info["reconstruction_cosine"]),
    )
    return info
