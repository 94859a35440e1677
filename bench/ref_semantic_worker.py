"""Times audiolm-pytorch's SemanticTransformer generation for bench_generate.py; runs inside the
reference virtualenv (../shared/bench-ref/setup_venvs.sh: torch 2.9.1, audiolm-pytorch 2.4.0).

The model is the one ../shared/bench-ref/bench_semantic.py times (RESULTS.md, section B):
`SemanticTransformer(dim, depth, heads, num_semantic_tokens, cond_dim=dim, t5_name=<local T5
config folder>)` with every other argument at its 2.4.0 default (unconditional, dropout 0,
learned MLP relative position bias, dim_head 64 with one shared K/V head, GEGLU feed-forward
mult 4, value-residual learning, 4-stream hyper-connections), random init, inside a
`SemanticTransformerWrapper`. The constructor always reads a T5 config by name even when unused,
so `t5_name` points at a folder with a T5 config.json written here (nothing is downloaded). The
EOS logit bias is set to -1e4 so that a random model never stops early: every call generates
exactly `max_length` tokens per row.

A long-lived worker, so that bench_generate.py can interleave its own timings with these (this
machine's speed drifts 15-30% within minutes). One JSON request per stdin line:

    {"build": NAME, "config": {"dim", "depth", "heads", "num_semantic_tokens", "batch",
                               "max_length", "filter_thres", "temperature", "use_kv_cache"}}
        builds the model (once per distinct model config), runs one untimed generation,
        replies {"params": {...}, "torch": version, "threads": n}.
    {"time": NAME}   generates once (`wrapper.generate(max_length, batch_size, ...)` under
        inference_mode), replies {"seconds": wall seconds}.

Each reply is one JSON line on stdout; anything the libraries print goes to stderr.
"""

import tempfile

import torch  # noqa: E402
from ref_worker import nparams, serve  # first: sets the environment before torch is imported


def local_t5_config_dir() -> str:
    """A folder with a T5 config.json (t5-v1_1-base sizes), as bench-ref/bench_semantic.py does."""
    from transformers import T5Config

    d = tempfile.mkdtemp(prefix="t5cfg_")
    T5Config(d_model=768, d_ff=2048, num_layers=12, num_heads=12, feed_forward_proj="gated-gelu").save_pretrained(d)
    return d


_MODELS = {}


def model(cfg: dict):
    from audiolm_pytorch import SemanticTransformer, SemanticTransformerWrapper

    key = (cfg["dim"], cfg["depth"], cfg["heads"], cfg["num_semantic_tokens"])
    if key not in _MODELS:
        torch.manual_seed(0)
        t = SemanticTransformer(
            dim=cfg["dim"],
            depth=cfg["depth"],
            heads=cfg["heads"],
            num_semantic_tokens=cfg["num_semantic_tokens"],
            cond_dim=cfg["dim"],
            t5_name=local_t5_config_dir(),
        )
        with torch.no_grad():
            t.to_logits.bias[t.eos_id] = -1e4  # never emit EOS: every row generates max_length tokens
        w = SemanticTransformerWrapper(transformer=t).eval()
        params = {
            "total": nparams(t),
            "embedding": nparams(t.semantic_embedding),
            "transformer": nparams(t.transformer),
            "rel_pos_bias_mlp": nparams(t.transformer.rel_pos_bias),
            "to_logits": nparams(t.to_logits),
        }
        _MODELS[key] = (w, params)
    return _MODELS[key]


def build(cfg: dict):
    w, params = model(cfg)

    def generate():
        with torch.inference_mode():
            out = w.generate(
                max_length=cfg["max_length"],
                batch_size=cfg["batch"],
                filter_thres=cfg.get("filter_thres", 0.9),
                temperature=cfg.get("temperature", 1.0),
                use_kv_cache=cfg.get("use_kv_cache", True),
            )
        if out.shape != (cfg["batch"], cfg["max_length"]):
            raise RuntimeError(f"generated shape {tuple(out.shape)}, expected {(cfg['batch'], cfg['max_length'])}")
        return out

    return generate, params


def main() -> None:
    serve(lambda req: build(req["config"]), build_seed=3000, time_seed=3001)


if __name__ == "__main__":
    main()
