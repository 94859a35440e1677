"""Generation speed on this machine: real-time factor per stage and end to end at the small
config, KV-cache decoding against the same stage decoded without a cache, and (unless
--skip_ref) audiolm-pytorch's SemanticTransformer generation at an equal config, interleaved.

    python bench/bench_generate.py [--runs 3] [--batch 8] [--skip_ref] [--skip_nocache] [--no_ynn_variant]

1. Real-time factor (RT = seconds of audio / seconds of compute; > 1 is faster than real time).
   Random-init StageModels from gin/models/{semantic,coarse,fine}_stage/small.gin sampled
   through `StageModel.predict_batch` (the compiled KV-cache loop of models/decoding.py; jitted
   with num_target_tokens static, temperature traced), one window per stage at its training
   length, and the SoundStream small decoder (gin/models/soundstream/small.gin, `model.decode`):
       semantic  10 s: 12 MuLan tokens -> 250 semantic tokens (25 Hz)
       coarse     2 s: 12 MuLan + 50 semantic -> 200 frames x 4 levels = 800 tokens (100 Hz codec)
       fine       1 s: 12 MuLan + 100 x 4 coarse -> 100 x 4 fine = 400 tokens
       codec     10 s: codes [1000, 8] -> 240,000 samples at 24 kHz
   at batch 1 and --batch (RT at batch B counts B clips of audio). Sampling as gin/runs/generate.gin:
   temperatures 1.0 / 0.95 / 0.4, no top-k / top-p / guidance. End to end = 1 / sum over stages of
   (compute seconds per audio second): the stages chained over non-overlapping windows (the sliding
   windows of models/musiclm.py re-read an overlap as a prefix, which costs more; not counted).
   Compile time (lower + compile, excluded from the RT) is reported separately.
2. Decode tokens/s with the KV cache vs without: the no-cache sampler below runs, for every token,
   the full causal forward pass over the fixed-length sequence [BOS, conditions, targets so far,
   padding] (length = the cache length of the KV-cache loop), takes the hidden state at the current
   position, projects only that position to logits, masks the legal range and samples with
   decoding.sample_logits, all inside one jitted lax.fori_loop: compiled vs compiled, same model,
   same prompt, same number of tokens. Its greedy output is checked against the KV-cache loop's.
3. Equal config against audiolm-pytorch 2.4.0 SemanticTransformerWrapper.generate (torch 2.9.1,
   reference venv /tmp/venv-ref291, worker bench/ref_semantic_worker.py): theirs dim 256, depth
   4, heads 4, 1024 semantic ids, unconditional, KV cache, top-k filter_thres 0.9 (k = 102 of
   1,025 logits), gumbel sampling at temperature 1; ours StageModel(d_model 256, 4 layers, 4 heads
   x 64 sharing one key/value head as theirs do, gated d_ff 682 = their GEGLU's inner width)
   over a layout [1-code 'mulan' condition stream, 1024-code semantic stream]
   (vocabulary 3 specials + 1 + 1024 = 1,028, no padding): the prompt is BOS + one constant
   condition token, i.e. unconditional-equivalent; top-k 102, temperature 1. 256 generated tokens
   per row, batch 1 and 8. Each repeat times ours once, then theirs once.

"ours" rows are compiled as the library compiles its samplers (nn/compiler.compiler_options:
on CPU the XLA option `xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_DOT`, YNNPACK
fusions for matmuls only); "XLA default" rows (section 1 at batch 1, section 3) without it.
jax 0.10.2's default also hands reductions to YNNPACK, and the single-query attention's
multiply-reduce over the cache (nn/attention.py) then costs ~0.2-0.45 ms per layer per token at
batch 1 (profiled: most of the per-token time at these sizes). At batch 8 the option measured
no different, so section 1 adds the variant at batch 1 only.

Every number is the median of --runs timed calls after a warm-up call; this machine drifts 15-30%
within minutes, so compare ratios taken in one run.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from machine import ReferenceWorker, machine, model_from_gin, table  # noqa: E402

from musiclm_jax.models import decoding  # noqa: E402
from musiclm_jax.models.stages import StageConfig, StageModel  # noqa: E402
from musiclm_jax.models.token_layout import TokenLayout  # noqa: E402
from musiclm_jax.nn.compiler import compiler_options  # noqa: E402
from musiclm_jax.nn.transformer import count_params, unscanned  # noqa: E402
from musiclm_jax.training.partitioning import unbox  # noqa: E402

DEFAULT_REF_PYTHON = "/tmp/venv-ref291/bin/python"
# "ours": the options the library compiles its samplers with (nn/compiler.compiler_options:
# YNNPACK fusions kept to matmuls on CPU); "XLA default": none, for comparison.
OURS = compiler_options()
XLA_DEFAULT = {}
SEMANTIC_RATE = 25  # semantic tokens per second

# stage: (gin name, window seconds, temperature); token counts follow from the gin's rates.
STAGES = {
    "semantic": ("semantic_stage/small", 10.0, 1.0),
    "coarse": ("coarse_stage/small", 2.0, 0.95),
    "fine": ("fine_stage/small", 1.0, 0.4),
}
CODEC_FRAME_RATE = 100  # SoundStream small: 24 kHz, hop 240


class _Seconds:
    """A reference worker's timing returned by a case: `timed` takes the worker's own wall time
    (which excludes the pipe round trip) instead of its own."""

    def __init__(self, seconds: float):
        self.seconds = seconds


def timed(fn) -> float:
    t = time.perf_counter()
    out = fn()
    if isinstance(out, _Seconds):
        return out.seconds
    jax.block_until_ready(out)
    return time.perf_counter() - t


def interleave(fns: dict, runs: int, warmup: bool = True) -> dict:
    """Median seconds of each callable, one call of each per repeat (after one warm-up call each
    unless `warmup` is False: the callables have already run)."""
    for fn in fns.values() if warmup else ():
        timed(fn)
    times = {k: [] for k in fns}
    for _ in range(runs):
        for k, fn in fns.items():
            times[k].append(timed(fn))
    return {k: float(np.median(v)) for k, v in times.items()}


def random_params(model: StageModel, shapes: dict):
    return jax.jit(lambda r: unbox(model.get_initial_variables(r, shapes)["params"]))(jax.random.PRNGKey(0))


# --- 1. stage windows ---------------------------------------------------------------------------


def stage_case(name: str, batch: int):
    """(model, params, predict batch, target tokens, audio seconds per row, temperature)."""
    gin_name, seconds, temperature = STAGES[name]
    model, lengths, _ = model_from_gin(gin_name)
    rng = np.random.default_rng(0)
    frames = int(seconds * CODEC_FRAME_RATE)
    data = {"mulan_tokens": rng.integers(0, 64, (batch, 12)).astype(np.int32)}
    if name == "semantic":
        targets = int(seconds * SEMANTIC_RATE)
    elif name == "coarse":
        data["semantic_tokens"] = rng.integers(0, 256, (batch, int(seconds * SEMANTIC_RATE))).astype(np.int32)
        targets = frames * model.config.target.num_levels
    else:  # fine: the coarse levels are the condition
        data["acoustic_tokens"] = rng.integers(0, 256, (batch, frames, 4)).astype(np.int32)
        targets = frames * model.config.target.num_levels
    shapes = {k: v.shape for k, v in data.items()}
    shapes.setdefault(model.config.target.feature, (batch, targets))
    params = random_params(model, shapes)
    return model, params, {k: jnp.asarray(v) for k, v in data.items()}, targets, seconds, temperature


def compile_sampler(model: StageModel, params, data: dict, targets: int, *, top_k: int = 0, options=None):
    """(compiled predict_batch(params, batch, rng, temperature), compile seconds)."""
    fn = jax.jit(lambda p, b, r, t: model.predict_batch(p, b, r, num_target_tokens=targets, temperature=t, top_k=top_k))
    t0 = time.perf_counter()
    compiled = fn.lower(params, data, jax.random.PRNGKey(1), jnp.float32(1.0)).compile(compiler_options=options or {})
    return compiled, time.perf_counter() - t0


def codec_case(batch: int, seconds: float = 10.0, options=None):
    model, _, _ = model_from_gin("soundstream/small")
    hop = model.config.hop_length
    params = jax.jit(
        lambda r: unbox(model.get_initial_variables(r, {"audio": (1, 4 * 1024 // hop * hop + hop)})["params"])
    )(jax.random.PRNGKey(0))
    frames = int(seconds * model.config.sample_rate / hop)
    codes = jnp.asarray(
        np.random.default_rng(0).integers(0, model.config.codebook_size, (batch, frames, model.config.num_levels)),
        jnp.int32,
    )
    t0 = time.perf_counter()
    compiled = jax.jit(model.decode).lower(params, codes).compile(compiler_options=options or {})
    compile_s = time.perf_counter() - t0
    gen_params = count_params(params["generator"]["decoder"]) + count_params(params["codebooks"])
    return (lambda: compiled(params, codes)), compile_s, seconds, gen_params


def bench_rt(batches: list[int], runs: int, ynn_variant: bool) -> list[dict]:
    rows = []
    for batch in batches:
        # The YNN variant only at batch 1: at batch 8 it measured the same as the default.
        variants = [("ours", OURS)] + ([("XLA default", XLA_DEFAULT)] if ynn_variant and batch == 1 else [])
        fns, info = {}, {}
        for stage in STAGES:
            model, params, data, targets, seconds, temperature = stage_case(stage, batch)
            for label, opts in variants:
                compiled, compile_s = compile_sampler(model, params, data, targets, options=opts)
                key = (stage, label)
                fns[key] = lambda c=compiled, p=params, d=data, t=temperature: c(
                    p, d, jax.random.PRNGKey(1), jnp.float32(t)
                )
                info[key] = dict(
                    tokens=targets,
                    audio_s=seconds,
                    compile_s=compile_s,
                    params=model.param_count(),
                    vocab=model.layout.vocab_size,
                )
        for label, opts in variants:
            fn, compile_s, seconds, n = codec_case(batch, options=opts)
            fns[("codec decode", label)] = fn
            info[("codec decode", label)] = dict(
                tokens=None, audio_s=seconds, compile_s=compile_s, params=n, vocab=None
            )
        med = interleave(fns, runs)
        for label, _ in variants:
            per_audio_s = 0.0
            for stage in (*STAGES, "codec decode"):
                key = (stage, label)
                i, s = info[key], med[key]
                per_audio_s += s / (batch * i["audio_s"])
                rows.append(
                    {
                        "stage": stage,
                        "variant": label,
                        "batch": batch,
                        "window_s": i["audio_s"],
                        "tokens/row": i["tokens"],
                        "params": f"{i['params'] / 1e6:.1f}M",
                        "compute_s": s,
                        "RT": batch * i["audio_s"] / s,
                        "tokens/s": batch * i["tokens"] / s if i["tokens"] else None,
                        "ms/step": s / i["tokens"] * 1e3 if i["tokens"] else None,
                        "compile_s": i["compile_s"],
                    }
                )
            rows.append(
                {
                    "stage": "end to end",
                    "variant": label,
                    "batch": batch,
                    "compute_s": per_audio_s,
                    "RT": 1.0 / per_audio_s,
                    "compile_s": sum(info[(s, label)]["compile_s"] for s in (*STAGES, "codec decode")),
                }
            )
    return rows


# --- 2. no-cache sampler --------------------------------------------------------------------------


def _final_hidden(mod, up, ids):
    """Hidden states after the last layer (before the final norm), [B, L, d], of the unrolled stack
    `mod` (nn.transformer.unscanned) with params `up`."""
    last = f"layers_{mod.config.num_layers - 1}"
    _, state = mod.apply(
        {"params": up},
        ids,
        deterministic=True,
        num_logits=1,
        capture_intermediates=lambda m, method: m.name == last and method == "__call__",
        mutable=["intermediates"],
    )
    return state["intermediates"][last]["__call__"][0][0]


def make_nocache_sampler(model: StageModel, data: dict, targets: int, *, top_k: int = 0):
    """jitted f(params, batch, rng, temperature) -> target ids [B, targets] without a KV cache.

    Same prompt, legal ranges and per-position keys (fold_in(rng, position)) as decoding.generate;
    each step runs the full forward pass over the fixed-length sequence (cache length of the KV loop)."""
    spec = model.config.target
    lo, hi = model.layout.level_ranges(spec.stream, spec.first_level, spec.num_levels)
    lo, hi = jnp.asarray(lo), jnp.asarray(hi)

    @jax.jit
    def sample(params, batch, rng, temperature):
        prompt = model.prompt_ids(batch)
        b, p = prompt.shape
        length = p + targets - 1
        seq = jnp.concatenate([prompt, jnp.zeros((b, targets - 1), jnp.int32)], axis=1)
        out = jnp.zeros((b, targets), jnp.int32)
        eps = 1e-6  # nn.RMSNorm's epsilon in nn/transformer.py
        mod, up = unscanned(model.module, params)

        def body(step, carry):
            seq, out = carry
            hidden = _final_hidden(mod, up, seq)
            h = jax.lax.dynamic_index_in_dim(hidden, p - 1 + step, axis=1, keepdims=False)  # [B, d]
            h = h * jax.lax.rsqrt(jnp.mean(jnp.square(h), axis=-1, keepdims=True) + eps) * up["final_norm"]["scale"]
            logits = (h @ up["logits"]["kernel"]).astype(jnp.float32)
            level = step % lo.shape[0]
            ids = jnp.arange(logits.shape[-1], dtype=jnp.int32)
            logits = jnp.where((ids >= lo[level]) & (ids < hi[level]), logits, -jnp.inf)
            token = decoding.sample_logits(logits, jax.random.fold_in(rng, step), temperature=temperature, top_k=top_k)
            seq = jax.lax.dynamic_update_index_in_dim(seq, token, jnp.minimum(p + step, length - 1), axis=1)
            out = jax.lax.dynamic_update_index_in_dim(out, token, step, axis=1)
            return seq, out

        _, out = jax.lax.fori_loop(0, targets, body, (seq, out))
        return out

    return sample


def bench_nocache(cases: list[tuple[str, StageModel, object, dict, int, int]], runs: int) -> list[dict]:
    rows = []
    for label, model, params, data, targets, top_k in cases:
        cached = jax.jit(
            lambda p, b, r, t: model.predict_batch(p, b, r, num_target_tokens=targets, temperature=t, top_k=top_k)
        )
        nocache = make_nocache_sampler(model, data, targets, top_k=top_k)
        spec = model.config.target
        to_ids = lambda codes: model.layout.to_ids(codes, spec.stream, spec.first_level, spec.num_levels)  # noqa: E731
        rng, greedy = jax.random.PRNGKey(1), jnp.float32(0.0)
        t0 = time.perf_counter()
        a = np.asarray(to_ids(cached(params, data, rng, greedy)))
        compile_cached = time.perf_counter() - t0
        t0 = time.perf_counter()
        b = np.asarray(nocache(params, data, rng, greedy))
        compile_nocache = time.perf_counter() - t0
        match = float(np.mean(a == b))
        one = jnp.float32(1.0)
        med = interleave(
            {"cache": lambda: cached(params, data, rng, one), "nocache": lambda: nocache(params, data, rng, one)},
            runs,
            warmup=False,
        )
        batch = a.shape[0]
        for kind, first in (
            ("KV cache (decoding.generate)", compile_cached),
            ("no cache (full forward per token)", compile_nocache),
        ):
            s = med["cache" if kind.startswith("KV") else "nocache"]
            rows.append(
                {
                    "stage": label,
                    "decoder": kind,
                    "batch": batch,
                    "tokens/row": targets,
                    "seconds": s,
                    "tokens/s": batch * targets / s,
                    "ms/step": s / targets * 1e3,
                    "first_call_s": first,
                    "greedy match": f"{match:.1%}" if kind.startswith("no") else None,
                    "speedup": med["nocache"] / med["cache"] if kind.startswith("KV") else None,
                }
            )
    return rows


# --- 3. equal config against audiolm-pytorch --------------------------------------------------------

REF_TOP_K = 102  # audiolm top_k(thres=0.9): k = int((1 - 0.9) * 1025)
REF_TOKENS = 256


def equal_model() -> StageModel:
    return StageModel(
        StageConfig(
            layout=TokenLayout(streams=(("mulan", 1, 1), ("semantic", 1, 1024)), pad_to_multiple=1),
            conditions=(("mulan_tokens", "mulan", 0, 1),),
            target=("semantic_tokens", "semantic", 0, 1),
            num_layers=4,
            num_heads=4,
            head_dim=64,
            d_model=256,
            d_ff=682,
            num_kv_heads=1,
            dropout_rate=0.0,
            cond_dropout_rate=0.0,
        )
    )


def equal_case(batch: int):
    model = equal_model()
    data = {"mulan_tokens": jnp.zeros((batch, 1), jnp.int32)}
    params = random_params(model, {"mulan_tokens": (1, 1), "semantic_tokens": (1, REF_TOKENS)})
    return model, params, data


def bench_ref(ref: ReferenceWorker | None, batches: list[int], runs: int, ynn_variant: bool) -> tuple[list[dict], dict]:
    rows, info = [], {}
    for batch in batches:
        model, params, data = equal_case(batch)
        info["ours_params"] = model.param_count()
        fns = {}
        for label, opts in [("ours", OURS)] + ([("ours, XLA default", XLA_DEFAULT)] if ynn_variant else []):
            compiled, _ = compile_sampler(model, params, data, REF_TOKENS, top_k=REF_TOP_K, options=opts)
            fns[label] = lambda c=compiled: c(params, data, jax.random.PRNGKey(1), jnp.float32(1.0))
        if ref:
            name = f"gen_b{batch}"
            info["ref"] = ref.build(
                name,
                config={
                    "dim": 256,
                    "depth": 4,
                    "heads": 4,
                    "num_semantic_tokens": 1024,
                    "batch": batch,
                    "max_length": REF_TOKENS,
                    "filter_thres": 0.9,
                    "temperature": 1.0,
                    "use_kv_cache": True,
                },
            )
            fns["audiolm-pytorch (KV cache)"] = lambda n=name: _Seconds(ref.time(n))
        med = interleave(fns, runs)
        theirs = med.get("audiolm-pytorch (KV cache)")
        for label, s in med.items():
            rows.append(
                {
                    "case": f"generate {REF_TOKENS} tokens, batch {batch}",
                    "implementation": label,
                    "seconds": s,
                    "tokens/s": batch * REF_TOKENS / s,
                    "ms/step": s / REF_TOKENS * 1e3,
                    "ours faster by": theirs / s if theirs and label.startswith("ours") else None,
                }
            )
    return rows, info


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("--runs", type=int, default=3, help="timed repeats per case (median), interleaved")
    p.add_argument("--batch", type=int, default=8, help="the larger batch (besides 1)")
    p.add_argument("--skip_ref", action="store_true", help="do not time audiolm-pytorch")
    p.add_argument("--skip_nocache", action="store_true", help="skip the (slow) no-cache decoding comparison")
    p.add_argument(
        "--no_ynn_variant", action="store_true", help="do not add the rows compiled with XLA's default options"
    )
    p.add_argument("--sections", default="1,2,3", help="which sections to run, e.g. 3")
    p.add_argument("--ref_python", default=os.environ.get("MUSICLM_REF_PYTHON", DEFAULT_REF_PYTHON))
    p.add_argument(
        "--ref_threads",
        type=int,
        default=2,
        help="torch threads of the reference (2 as in bench-ref; under CPU contention from other "
        "processes 2 OpenMP threads can stall 10-20x on barriers: use 1 there)",
    )
    args = p.parse_args()
    ynn = not args.no_ynn_variant
    batches = [1, args.batch]
    t_start = time.perf_counter()
    print(f"machine: {machine()}; float32; median of {args.runs} interleaved repeats after 1 warm-up", flush=True)

    sections = {int(x) for x in args.sections.split(",")}
    if 1 in sections:
        rt = bench_rt(batches, args.runs, ynn)
        print("\n## 1. Real-time factor per stage, small config (one window per stage; RT = audio s / compute s)\n")
        print(
            table(
                rt,
                [
                    "stage",
                    "variant",
                    "batch",
                    "window_s",
                    "tokens/row",
                    "params",
                    "compute_s",
                    "RT",
                    "tokens/s",
                    "ms/step",
                    "compile_s",
                ],
            ),
            flush=True,
        )

    if 2 in sections and not args.skip_nocache:
        cases = []
        model, params, data, targets, _, _ = stage_case("semantic", 1)
        cases.append(("semantic small (10 s)", model, params, data, targets, 0))
        model, params, data = equal_case(1)
        cases.append(("equal config (section 3)", model, params, data, REF_TOKENS, REF_TOP_K))
        nc = bench_nocache(cases, max(2, args.runs - 1))
        print("\n## 2. Decode with vs without a KV cache (same model, prompt and token count; batch 1)\n")
        print(
            table(
                nc,
                [
                    "stage",
                    "decoder",
                    "batch",
                    "tokens/row",
                    "seconds",
                    "tokens/s",
                    "ms/step",
                    "speedup",
                    "first_call_s",
                    "greedy match",
                ],
            ),
            flush=True,
        )

    if 3 not in sections:
        print(f"\ntotal bench time {time.perf_counter() - t_start:.0f} s")
        return
    ref = None
    if not args.skip_ref:
        if os.path.exists(args.ref_python):
            ref = ReferenceWorker("ref_semantic_worker.py", args.ref_python, args.ref_threads)
        else:
            print(f"\n(no reference venv at {args.ref_python!r}: timing ours only)")
    rows, info = bench_ref(ref, batches, args.runs, ynn)
    if ref:
        ref.close()
    print("\n## 3. Equal config vs audiolm-pytorch SemanticTransformer generation (top-k 102, temperature 1)\n")
    print(table(rows, ["case", "implementation", "seconds", "tokens/s", "ms/step", "ours faster by"]))
    print(
        f"\nparameters: ours {info['ours_params']:,} (StageModel d_model 256, 4 x (4 heads x 64), "
        f"one K/V head, d_ff 682 gated GELU, vocabulary 1,028)"
        + (
            f"; audiolm-pytorch {info['ref']['params']['total']:,} ({info['ref']['params']}; "
            f"torch {info['ref']['torch']}, {info['ref']['threads']} threads)"
            if "ref" in info
            else ""
        )
    )
    print(f"total bench time {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
