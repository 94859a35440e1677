"""w2v-BERT and semantic-token speed on this machine: training examples/s + MFU, tokenisation
(x real time), and the k-means (fit and assignment points/s).

Configs come from gin/models/w2v_bert/{tiny,small,paper}.gin with random weights (speed does
not depend on the values). Training is the trainer's compiled step on one device; MFU = step
FLOPs (counted on the jaxpr) / step time / this machine's float32 matmul rate measured in the same
run. Tokenisation: `SemanticTokenizer` (embedding layer + nearest of `--clusters` centroids) on
10 s clips. k-means: mini-batch steps of 4,096 points of the config's width. Medians of --runs.

    python bench/bench_w2v_bert.py              # tiny + small
    python bench/bench_w2v_bert.py --paper      # + the paper config (600M parameters; slow on a CPU)
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from machine import machine, median_time, model_from_gin, random_batch, table, time_train_step  # noqa: E402

from musiclm_jax.tokenizers import kmeans  # noqa: E402
from musiclm_jax.tokenizers.semantic import SemanticTokenizer  # noqa: E402
from musiclm_jax.training.mfu import measure_matmul_flops  # noqa: E402
from musiclm_jax.training.partitioning import unbox  # noqa: E402


def bench_train(name: str, runs: int, matmul: float, batch: int | None) -> dict:
    model, lengths, default_batch = model_from_gin(f"w2v_bert/{name}")
    batch = batch or default_batch
    r = time_train_step(model, random_batch(model, lengths, batch), runs)
    return dict(
        config=name,
        params=r["params"],
        batch=batch,
        crop_s=lengths["audio"] / model.config.sample_rate,
        step_s=r["step_s"],
        examples_per_s=batch / r["step_s"],
        gflop_per_step=r["flops"] / 1e9,
        mfu=r["flops"] / r["step_s"] / matmul,
    )


def bench_tokenize(name: str, runs: int, clusters: int, clip_seconds: float = 10.0, num_clips: int = 4) -> dict:
    model, lengths, _ = model_from_gin(f"w2v_bert/{name}")
    params = jax.jit(lambda r: unbox(model.get_initial_variables(r, {"audio": (1, lengths["audio"])}))["params"])(
        jax.random.PRNGKey(0)
    )
    rng = np.random.default_rng(1)
    centroids = rng.standard_normal((clusters, model.config.d_model)).astype(np.float32)
    tok = SemanticTokenizer(model, params, centroids)
    clips = 0.1 * rng.standard_normal((num_clips, int(clip_seconds * model.config.sample_rate))).astype(np.float32)
    t = median_time(lambda: tok.tokenize(clips), 1, runs)
    return dict(
        config=name,
        layer=tok.layer,
        clusters=clusters,
        clips=f"{num_clips} x {clip_seconds:g} s",
        seconds=t,
        x_real_time=num_clips * clip_seconds / t,
    )


def bench_kmeans(dim: int, clusters: int, runs: int, points: int = 4096) -> dict:
    rng = np.random.default_rng(2)
    batches = [rng.standard_normal((points, dim)).astype(np.float32) for _ in range(runs + 2)]
    kmeans.fit_minibatch_kmeans(batches[:2], clusters, seed=0)  # compile
    t0 = time.perf_counter()
    state = kmeans.fit_minibatch_kmeans(batches, clusters, seed=0)
    fit = time.perf_counter() - t0
    assign = median_time(lambda: kmeans.assign(state.centroids, batches[0]), 1, runs)
    return dict(
        dim=dim,
        clusters=clusters,
        batch_points=points,
        fit_points_per_s=len(batches) * points / fit,
        assign_points_per_s=points / assign,
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--paper", action="store_true", help="also the paper config (batch --paper_batch)")
    p.add_argument("--paper_batch", type=int, default=1)
    args = p.parse_args()
    matmul = measure_matmul_flops()
    names = ["tiny", "small"] + (["paper"] if args.paper else [])
    clusters = {"tiny": 128, "small": 512, "paper": 1024}
    train = [bench_train(n, args.runs, matmul, args.paper_batch if n == "paper" else None) for n in names]
    tokenize = [bench_tokenize(n, args.runs, clusters[n]) for n in names]
    km = [bench_kmeans(d, k, args.runs) for d, k in ((64, 128), (1024, 1024))]
    print(f"machine: {machine()}; float32 matmul {matmul / 1e9:.0f} GFLOP/s; median of {args.runs}")
    print("\nTraining (trainer step, 1 device, random data)\n" + table(train))
    print("\nSemantic tokenisation (random weights and centroids)\n" + table(tokenize))
    print(
        "\nk-means (fit: one pass of mini-batch steps incl. k-means++ seeding; assign: nearest centroid)\n" + table(km)
    )


if __name__ == "__main__":
    main()
