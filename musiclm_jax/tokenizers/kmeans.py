"""k-means for semantic tokens: w2v-BERT embeddings (7th MLM layer) -> 1024 cluster ids.

    state = fit_minibatch_kmeans(embedding_batches, 1024, seed=0, mesh=mesh)  # one pass
    centroids = lloyd_refine(sample, state.centroids, iters=5)          # optional, small data
    save_kmeans(out_dir, state, {"layer": 7})        # kmeans.npz + kmeans.json
    centroids, info = load_kmeans(out_dir)
    tokens = assign(centroids, embeddings)           # int32 [N]

Mini-batch k-means (Sculley 2010): greedy k-means++ seeding on the first batch (or
`init_points`), then per batch every centroid moves towards the mean of its assigned points
with learning rate batch_count / total_count, so each centroid is the running mean of all
points ever assigned to it. The math (distances, k-means++, Lloyd) is nn/quantizer's. With a mesh the batch is
sharded over 'data' (and 'fsdp'), centroids are replicated, and the per-centroid sums and
counts are reductions over the batch, so the result equals the unsharded one up to float
rounding. Single host only: every batch is the global batch.
"""

from __future__ import annotations

import dataclasses
import io
import itertools
import json
from typing import Callable, Iterable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from musiclm_jax import fileio
from musiclm_jax.nn import quantizer

NPZ_NAME = "kmeans.npz"
JSON_NAME = "kmeans.json"
_HIGHEST = jax.lax.Precision.HIGHEST


@dataclasses.dataclass(frozen=True)
class KMeansState:
    centroids: np.ndarray  # [K, D] float32
    counts: np.ndarray  # [K] int64 points assigned to each centroid over the fit
    num_points: int  # points seen by the mini-batch steps (the init batch counts once)
    num_steps: int
    inertia_history: tuple  # per step: mean squared distance of the batch before its update

    @property
    def k(self) -> int:
        return int(self.centroids.shape[0])


def _check_points(points, what: str, dim: Optional[int] = None) -> np.ndarray:
    x = np.asarray(points)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"{what}: expected a non-empty [N, D] array, got shape {x.shape}")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"{what}: points have dim {x.shape[1]}, centroids have dim {dim}")
    if not np.issubdtype(x.dtype, np.number):
        raise ValueError(f"{what}: expected numbers, got dtype {x.dtype}")
    x = x.astype(np.float32, copy=False)
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{what}: {int(np.sum(~np.isfinite(x)))} non-finite values (NaN/inf)")
    return x


def _check_k(k) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    return int(k)


_kmeans_pp_jit = jax.jit(quantizer.kmeans_plus_plus, static_argnums=(1, 3))


def kmeans_plus_plus_init(points, k: int, rng: jax.Array, *, num_candidates: Optional[int] = None) -> np.ndarray:
    """Greedy k-means++ seeding: k rows of points [N, D] (k <= N) as float32 [K, D].

    num_candidates per step defaults to 2 + int(ln k) (scikit-learn's choice); 1 is plain
    k-means++, which on clustered data often leaves a worse local optimum.
    """
    k = _check_k(k)
    x = _check_points(points, "kmeans_plus_plus_init")
    if k > x.shape[0]:
        raise ValueError(f"k={k} is larger than the number of init points ({x.shape[0]})")
    c = 2 + int(np.log(k)) if num_candidates is None else int(num_candidates)
    if c < 1:
        raise ValueError(f"num_candidates must be >= 1, got {num_candidates}")
    return np.asarray(_kmeans_pp_jit(jnp.asarray(x), k, rng, c))


@jax.jit
def _minibatch_step(centroids, counts, batch, weights):
    """One mini-batch step; weights [B] are 0 for padding rows. counts int32 [K]."""
    codes = quantizer.nearest(batch, centroids)
    diff = batch - centroids[codes]
    sq = jnp.sum(diff * diff, axis=-1)  # exact distances: the matmul form cancels badly
    onehot = jax.nn.one_hot(codes, centroids.shape[0], dtype=jnp.float32) * weights[:, None]
    batch_counts = jnp.sum(onehot, axis=0)
    sums = jnp.matmul(onehot.T, batch, precision=_HIGHEST)
    total = counts.astype(jnp.float32) + batch_counts
    # c += (mean - c) * n_batch / n_total, written without dividing by n_batch.
    step = (sums - batch_counts[:, None] * centroids) / jnp.maximum(total, 1.0)[:, None]
    new = jnp.where(batch_counts[:, None] > 0, centroids + step, centroids)
    return new, counts + batch_counts.astype(jnp.int32), jnp.sum(sq * weights) / jnp.sum(weights)


def _batch_placement(mesh: Optional[Mesh]):
    """(number of batch shards, function putting a [B, D] / [B] array on the devices)."""
    if mesh is None:
        return 1, jnp.asarray
    axes = tuple(a for a in ("data", "fsdp") if a in mesh.axis_names)
    if not axes:
        raise ValueError(f"mesh axes {mesh.axis_names} have neither 'data' nor 'fsdp'")
    shards = int(np.prod([mesh.shape[a] for a in axes]))

    def put(x):
        spec = PartitionSpec(axes, *([None] * (x.ndim - 1)))
        return jax.device_put(x, NamedSharding(mesh, spec))

    return shards, put


def fit_minibatch_kmeans(
    batches: Iterable[np.ndarray],
    k: int,
    *,
    seed: int = 0,
    init_points: Optional[np.ndarray] = None,
    max_steps: Optional[int] = None,
    mesh: Optional[Mesh] = None,
    progress: Optional[Callable[[int, float], None]] = None,
) -> KMeansState:
    """Mini-batch k-means over `batches` ([B, D] arrays, one pass, at most `max_steps`).

    Deterministic given `seed` and the batch order.

    Args:
      batches: float [B, D] arrays (B may vary), read once; may be endless when `max_steps` is set.
      k: the number of centroids, an integer >= 1 (at most the number of init points).
      seed: seeds the greedy k-means++ seeding.
      init_points: float [N >= k, D] to seed on; None seeds on the first batch, which is then also
        the first step.
      max_steps: at most this many steps (one per batch); None runs until `batches` ends.
      mesh: shards each batch over its 'data' and 'fsdp' axes (padded to a multiple of the shard
        count with rows of weight 0) and replicates the centroids; None for one device.
      progress: `progress(step, batch_mean_sq_distance)` is called after each step (it waits for
        the device).
    Returns:
      The KMeansState: centroids float32 [k, D], counts int64 [k], num_points, num_steps and
      inertia_history (per step, the batch's mean squared distance before its update).
    Raises:
      ValueError: `k` not an integer >= 1, `max_steps` < 0, no batch and no `init_points`, fewer
        init points than `k`, a mesh with neither 'data' nor 'fsdp', or a batch that is empty, not
        [N, D], of another dim or not finite.
    """
    k = _check_k(k)
    if max_steps is not None and max_steps < 0:
        raise ValueError(f"max_steps must be >= 0, got {max_steps}")
    shards, put = _batch_placement(mesh)
    replicated = (lambda x: jax.device_put(x, NamedSharding(mesh, PartitionSpec()))) if mesh else jnp.asarray
    it = iter(batches)
    first = None
    if init_points is None:
        first = next(it, None)
        if first is None:
            raise ValueError("fit_minibatch_kmeans: `batches` is empty and no init_points were given")
        init = _check_points(first, "first batch (k-means++ init)")
    else:
        init = _check_points(init_points, "init_points")
    dim = init.shape[1]
    centroids = replicated(kmeans_plus_plus_init(init, k, jax.random.PRNGKey(seed)))
    counts = replicated(np.zeros((k,), np.int32))
    history, num_points, step = [], 0, 0

    def batches_after_init():
        if first is not None:
            yield first
        yield from it

    # islice stops without pulling a batch past max_steps, so an endless iterator is fine.
    for batch in itertools.islice(batches_after_init(), max_steps):
        x = _check_points(batch, f"batch {step}", dim)
        n = x.shape[0]
        pad = -n % shards  # pad to a multiple of the shard count; padding rows weigh 0
        w = np.ones((n + pad,), np.float32)
        if pad:
            x = np.concatenate([x, np.zeros((pad, dim), np.float32)])
            w[n:] = 0.0
        centroids, counts, mean_sq = _minibatch_step(centroids, counts, put(x), put(w))
        history.append(mean_sq)
        num_points += n
        step += 1
        if progress is not None:
            progress(step, float(mean_sq))
    return KMeansState(
        centroids=np.asarray(centroids, np.float32),
        counts=np.asarray(counts).astype(np.int64),
        num_points=num_points,
        num_steps=step,
        inertia_history=tuple(float(h) for h in history),
    )


_lloyd_jit = jax.jit(quantizer.lloyd, static_argnums=2)


def lloyd_refine(points, centroids, iters: int) -> np.ndarray:
    """`iters` full-batch Lloyd steps on all of points [N, D] (memory ~ N * K): small data."""
    c = _check_points(centroids, "centroids")
    x = _check_points(points, "lloyd_refine points", c.shape[1])
    if iters < 0:
        raise ValueError(f"iters must be >= 0, got {iters}")
    return np.asarray(_lloyd_jit(jnp.asarray(x), jnp.asarray(c), int(iters)))


@jax.jit
def _nearest_and_sq(centroids, points):
    codes = quantizer.nearest(points, centroids)
    diff = points - centroids[codes]
    return codes, jnp.sum(diff * diff, axis=-1)


def _chunked(centroids, points, batch_size: int):
    """(codes int32 [N], squared distances float32 [N]) in fixed-size chunks (one compile)."""
    c = _check_points(centroids, "centroids")
    x = _check_points(points, "points", c.shape[1])
    n = x.shape[0]
    size = min(int(batch_size), n)
    cj = jnp.asarray(c)
    codes, sq = [], []
    for start in range(0, n, size):
        chunk = x[start : start + size]
        m = chunk.shape[0]
        if m < size:
            chunk = np.concatenate([chunk, np.zeros((size - m, x.shape[1]), np.float32)])
        cd, d = _nearest_and_sq(cj, jnp.asarray(chunk))
        codes.append(np.asarray(cd)[:m])
        sq.append(np.asarray(d)[:m])
    return np.concatenate(codes), np.concatenate(sq)


def assign(centroids, points, *, batch_size: int = 8192) -> np.ndarray:
    """Index of the nearest centroid, int32 [N], for points [N, D]."""
    return _chunked(centroids, points, batch_size)[0]


def inertia(centroids, points, *, batch_size: int = 8192) -> float:
    """Sum over points of the squared distance to the nearest centroid (float64 sum)."""
    return float(np.sum(_chunked(centroids, points, batch_size)[1], dtype=np.float64))


def save_kmeans(directory: str, state: KMeansState, info: dict) -> None:
    """kmeans.npz (centroids, counts) + kmeans.json (fit metadata and `info`), each written whole
    (locally to a temporary name and renamed; on an object store as one object), the npz first:
    `directory` may be a URL (gs://...)."""
    fileio.makedirs(directory)
    meta = {
        "k": state.k,
        "dim": int(state.centroids.shape[1]),
        "num_points": int(state.num_points),
        "num_steps": int(state.num_steps),
        "inertia_history": [float(h) for h in state.inertia_history],
        **info,
    }
    buffer = io.BytesIO()
    np.savez(buffer, centroids=np.asarray(state.centroids, np.float32), counts=np.asarray(state.counts, np.int64))
    fileio.write_bytes(fileio.join(directory, NPZ_NAME), buffer.getvalue())
    fileio.write_text(fileio.join(directory, JSON_NAME), json.dumps(meta, indent=1))


def load_kmeans(directory: str) -> tuple[np.ndarray, dict]:
    """(centroids float32 [K, D], info from kmeans.json or {} when it is missing)."""
    path = fileio.join(directory, NPZ_NAME)
    if not fileio.exists(path):
        raise FileNotFoundError(f"{path} not found: fit the k-means first (fit_minibatch_kmeans + save_kmeans)")
    try:
        with np.load(io.BytesIO(fileio.read_bytes(path)), allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except Exception as e:  # not a zip, truncated, or an object array needing pickle
        raise ValueError(f"{path} is not a readable k-means npz: {e}") from e
    c = arrays.get("centroids")
    if c is None or c.ndim != 2 or c.shape[0] < 1 or not np.issubdtype(c.dtype, np.floating):
        raise ValueError(f"{path} has no float [K, D] 'centroids' (arrays: {sorted(arrays)})")
    if not np.all(np.isfinite(c)):
        raise ValueError(f"{path}: centroids contain non-finite values")
    info_path = fileio.join(directory, JSON_NAME)
    info = {}
    if fileio.exists(info_path):
        try:
            info = json.loads(fileio.read_text(info_path))
        except json.JSONDecodeError as e:
            raise ValueError(f"{info_path} is not valid JSON: {e}") from e
    return c.astype(np.float32), info
