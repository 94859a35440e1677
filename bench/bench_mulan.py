"""MuLan speed on this machine: training examples/s + MFU, and embedding throughput (clips/s).

Configs come from the model gin files (gin/models/mulan/{tiny,small,paper}.gin), with random
weights. Training is the trainer's own compiled step (one device). Embedding follows the paper:
each clip is cut into windows (window_seconds at hop_seconds), every window embedded, averaged;
clips/s counts 10 s clips. MFU = step FLOPs (counted on the jaxpr) / step time / this machine's float32
matmul rate measured in the same run. Medians of --runs timed calls after warm-up.

    python bench/bench_mulan.py                 # tiny + small
    python bench/bench_mulan.py --paper         # + the paper config (ResNet-50 + BERT-base; slow)

Caption generalisation of a trained MuLan (--recall MODEL_DIR): text-to-audio recall@1/10 over
validation pieces of the synthetic source, each piece retrieved by a training-family caption and
by a held-out-family one (words and frames no training caption uses, data/captions.py), side by
side; the gap measures how far the text tower generalises beyond the phrasings it learnt:

    python bench/bench_mulan.py --recall /tmp/mulan_tiny --recall_pieces 128 --recall_seconds 4

What a trained MuLan carries about register, drums and tempo (--attributes MODEL_DIR): over
--recall_pieces validation pieces, a 4-fold logistic probe on the audio embeddings (what the
audio side holds), and per prompt family (train, heldout, plain: evaluation/eval_sets.py) the
share of the 5 pieces nearest to a prompt's text embedding that have the prompt's value (what the
text lands on; this is what the stages receive as MuLan tokens), beside chance (the share of
pieces with the prompt's value: a text tower that ignored the words):

    python bench/bench_mulan.py --attributes /tmp/musiclm/mulan --recall_pieces 192
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from machine import machine, median_time, model_from_gin, random_batch, table, time_train_step  # noqa: E402

from musiclm_jax.tokenizers.mulan import MuLanEmbedder  # noqa: E402
from musiclm_jax.training.mfu import measure_matmul_flops  # noqa: E402
from musiclm_jax.training.partitioning import unbox  # noqa: E402


def bench_train(name: str, runs: int, matmul: float, batch: int | None) -> dict:
    model, lengths, default_batch = model_from_gin(f"mulan/{name}")
    lengths["audio"] = model.config.window_samples  # crops = the embedding window
    batch = batch or default_batch
    r = time_train_step(model, random_batch(model, lengths, batch), runs)
    return dict(
        config=name,
        encoder=model.config.audio_encoder,
        params=r["params"],
        batch=batch,
        crop_s=lengths["audio"] / model.config.sample_rate,
        step_s=r["step_s"],
        examples_per_s=batch / r["step_s"],
        mfu=r["flops"] / r["step_s"] / matmul if r["flops"] else None,
    )


def bench_embed(name: str, runs: int, clip_seconds: float = 10.0, num_clips: int = 8) -> dict:
    model, lengths, _ = model_from_gin(f"mulan/{name}")
    lengths["audio"] = model.config.window_samples
    params = jax.jit(
        lambda r: unbox(
            model.get_initial_variables(r, {"audio": (1, lengths["audio"]), "text_tokens": (1, lengths["text_tokens"])})
        )["params"]
    )(jax.random.PRNGKey(0))
    embedder = MuLanEmbedder(model, params, window_batch=16)
    rng = np.random.default_rng(1)
    clips = [
        0.1 * rng.standard_normal(int(clip_seconds * model.config.sample_rate)).astype(np.float32)
        for _ in range(num_clips)
    ]
    t = median_time(lambda: embedder.embed_audio(clips), 1, runs)
    windows = len(range(0, max(1, int(clip_seconds - model.config.window_seconds) + 1)))
    return dict(
        config=name,
        clip_s=clip_seconds,
        clips=num_clips,
        windows_per_clip=windows,
        seconds=t,
        clips_per_s=num_clips / t,
        x_real_time=num_clips * clip_seconds / t,
    )


def bench_recall(model_dir: str, num_pieces: int, seconds: float, prompts_per_piece: int = 3) -> list[dict]:
    """Recall@1/5/10 of text -> audio over `num_pieces` validation pieces, per caption family:
    `prompts_per_piece` captions of each piece in turn (recall averaged over them), and the same
    with the held-out adherence prompts' phrasing (register, drums and tempo always stated)."""
    from musiclm_jax.data import synthetic
    from musiclm_jax.models.mulan import recall_at_k
    from musiclm_jax.tokenizers.mulan import MuLanEmbedder

    embedder = MuLanEmbedder.from_model_dir(model_dir)
    seed = synthetic.SPLIT_SEEDS["validation"]
    clips = [
        synthetic.render(seed, i, sample_rate=embedder.sample_rate, duration_s=seconds).audio for i in range(num_pieces)
    ]
    audio = embedder.embed_audio(clips)
    rows = []
    for family in ("train", "heldout"):
        for require, what in (((), "any attributes"), (("register", "drums", "tempo_class"), "register+drums+tempo")):
            per_draw = [
                synthetic.captions_of(seed, i, family=family, num=prompts_per_piece, require=require)
                for i in range(num_pieces)
            ]
            recalls = []
            for j in range(prompts_per_piece):
                text = embedder.embed_text([c[j % len(c)].text for c in per_draw])
                recalls.append(recall_at_k(text, audio, (1, 5, 10)))
            rows.append(
                {
                    "family": family,
                    "captions state": what,
                    "pieces": num_pieces,
                    **{f"t2a_recall@{k}": float(np.mean([r[k] for r in recalls])) for k in (1, 5, 10)},
                    "chance@1": 1 / num_pieces,
                    "chance@10": min(1.0, 10 / num_pieces),
                }
            )
    return rows


def bench_attributes(model_dir: str, num_pieces: int, seconds: float) -> list[dict]:
    """Per attribute: audio probe accuracy, and per prompt family the nearest-5 agreement."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score

    from musiclm_jax.data import synthetic
    from musiclm_jax.evaluation import eval_sets
    from musiclm_jax.tokenizers.mulan import MuLanEmbedder

    embedder = MuLanEmbedder.from_model_dir(model_dir)
    seed = synthetic.SPLIT_SEEDS["validation"]
    labels = [synthetic.labels_of(seed, i) for i in range(num_pieces)]
    clips = [
        synthetic.render(seed, i, sample_rate=embedder.sample_rate, duration_s=seconds).audio for i in range(num_pieces)
    ]
    audio = np.asarray(embedder.embed_audio(clips))
    rows = []
    for attr in eval_sets.PROMPT_ATTRIBUTES:
        y = np.array([str(lab[attr]) for lab in labels])
        probe = LogisticRegression(C=10.0, max_iter=3000)
        row = {
            "attribute": attr,
            "audio probe: majority": max(np.mean(y == v) for v in set(y)),
            "audio probe": float(cross_val_score(probe, audio, y, cv=4).mean()),
        }
        for family in eval_sets.PROMPT_FAMILIES:
            prompts = eval_sets.held_out_prompts(54, family=family)
            text = np.asarray(embedder.embed_text([p["caption"] for p in prompts]))
            nearest = np.argsort(-(text @ audio.T), axis=1)[:, :5]
            want = np.array([str(p["labels"][attr]) for p in prompts])
            row[f"{family} text: nearest 5"] = float(np.mean(y[nearest] == want[:, None]))
        row["nearest 5: chance"] = float(np.mean([np.mean(y == w) for w in want]))  # any text, same prompts
        rows.append(row)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--paper", action="store_true", help="also the paper config (batch --paper_batch)")
    p.add_argument("--paper_batch", type=int, default=2)
    p.add_argument("--recall", metavar="MODEL_DIR", help="only the caption-family recall of a trained MuLan")
    p.add_argument("--attributes", metavar="MODEL_DIR", help="only what a trained MuLan carries about the attributes")
    p.add_argument("--recall_pieces", type=int, default=128)
    p.add_argument("--recall_seconds", type=float, default=4.0, help="length of the pieces (the training clips')")
    args = p.parse_args()
    if args.attributes:
        rows = bench_attributes(args.attributes, args.recall_pieces, args.recall_seconds)
        print(f"machine: {machine()}; MuLan {args.attributes}; {args.recall_pieces} validation pieces")
        print("\nRegister, drums and tempo in MuLan's space (54 prompts per family)\n" + table(rows))
        return
    if args.recall:
        rows = bench_recall(args.recall, args.recall_pieces, args.recall_seconds)
        print(f"machine: {machine()}; MuLan {args.recall}")
        print("\nText -> audio retrieval over validation pieces, by caption family\n" + table(rows))
        return
    matmul = measure_matmul_flops()
    names = ["tiny", "small"] + (["paper"] if args.paper else [])
    train = [bench_train(n, args.runs, matmul, args.paper_batch if n == "paper" else None) for n in names]
    embed = [bench_embed(n, args.runs) for n in names]
    print(f"machine: {machine()}; float32 matmul {matmul / 1e9:.0f} GFLOP/s; median of {args.runs}")
    print("\nTraining (trainer step, 1 device, random data)\n" + table(train))
    print("\nAudio embedding of 10 s clips (windows averaged)\n" + table(embed))


if __name__ == "__main__":
    main()
