"""LoRA (Hu et al., 2021) for any trained model directory: low-rank adapters on chosen kernels.

    model = model_io.lora_model("/runs/coarse_stage", rank=8, alpha=16.0)   # gin: runs/lora.gin

The base model is rebuilt from base_dir/model.json (model_io) and its parameters are read from
base_dir/checkpoints: they are never trained, optimised or checkpointed here. Each kernel whose
path matches one of `targets` (regular expressions, e.g. 'attention/(query|key|value)/kernel')
gets A [..., in, rank] (normal, std 1/sqrt(in)) and B [..., rank, out] (zeros, so training starts
from the base model), and the model computes with W + (alpha / rank) * A @ B. A kernel's axes
are split into input and output from their logical names (`_split`: query [embed] -> [heads, kv],
out [heads, kv] -> [embed]); leading stacked-layer axes are batch axes of the product. A and B
carry W's logical axes on their `in` and `out` sides, so they shard with it.

Why the adapters are merged into the kernels in the step rather than applied as x @ A @ B
beside x @ W: the model's own modules run unchanged (any model, any attention or MLP kernel,
scanned or not), and the extra cost is rank * in * out per kernel per step, small against the
token matmuls. The trained state is params = {'adapters': ..., 'base': ...}: the trainer gives
'base' no optimiser (optimizer_groups) and the checkpoints leave it out (frozen_params_source);
it is read from base_dir at every start and resume.

A LoRA directory loads (model_io.load) as its base kind with the adapters merged in: generate,
eval and export use it like any model directory (an export stores the merged kernels).
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from musiclm_jax import fileio
from musiclm_jax.models.base import BaseModel, Batch, Metrics, Variables
from musiclm_jax.nn.axes import param_path

# The stages' and MuLan's attention projections and feed-forward kernels.
DEFAULT_TARGETS = (r"attention/(query|key|value|out)$", r"mlp/[^/]*/kernel$")
ADAPTERS, BASE = "adapters", "base"


def _split(names: Sequence, ndim: int) -> tuple[int, int]:
    """(leading stacked-layer axes, input axes) of a kernel from its logical axis names: the rest
    are output axes. A projection into the model width ('embed' last: attention 'out', the MLP's
    'wo') takes every other axis as input; any other kernel (query/key/value: embed -> heads x kv;
    'wi': embed -> mlp) takes its first axis."""
    n_lead = 0
    while n_lead < ndim - 2 and names[n_lead] == "layers":
        n_lead += 1
    rest = ndim - n_lead
    n_in = rest - 1 if names[-1] == "embed" and rest > 2 else 1
    return n_lead, n_in


class LoRAModel(BaseModel):
    """Adapters on the kernels of the model in `base_dir` that match `targets`."""

    def __init__(
        self,
        base: BaseModel,
        base_dir: str,
        rank: int = 8,
        alpha: float = 16.0,
        targets: Sequence[str] = DEFAULT_TARGETS,
        step: Optional[int] = None,
    ):
        """`base`: the model of `base_dir` (model_io.lora_model rebuilds it from model.json);
        `step`: the base checkpoint to read (None: the latest)."""
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}")
        if not targets:
            raise ValueError("LoRA needs at least one target pattern")
        self.base, self.base_dir, self.rank, self.alpha, self.step = base, base_dir, int(rank), float(alpha), step
        self.base_kind = type(base).__name__  # the model_io kind it was built as
        self.targets = tuple(targets)
        self._patterns = [re.compile(t) for t in self.targets]
        self.FEATURE_DTYPES = base.FEATURE_DTYPES

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def config_dict(self) -> dict:
        return {
            "model": "LoRAModel",
            "config": {
                "base_dir": self.base_dir,
                "rank": self.rank,
                "alpha": self.alpha,
                "targets": list(self.targets),
                "step": self.step,
                "base_kind": self.base_kind,
            },
        }

    def _targeted(self, name: str, ndim: int) -> bool:
        return ndim >= 2 and any(p.search(name) for p in self._patterns)

    # ---- variables ----------------------------------------------------------------------------
    def get_initial_variables(self, rng: jax.Array, input_shapes: Mapping[str, Sequence[int]]) -> Variables:
        base_rng, adapter_rng = jax.random.split(rng)
        base = self.base.get_initial_variables(base_rng, input_shapes)["params"]
        adapters = {}
        boxed = jax.tree_util.tree_flatten_with_path(base, is_leaf=lambda x: isinstance(x, nn.Partitioned))[0]
        for i, (path, leaf) in enumerate(boxed):
            value = leaf.value if isinstance(leaf, nn.Partitioned) else leaf
            names = leaf.names if isinstance(leaf, nn.Partitioned) else (None,) * value.ndim
            name = param_path(path)
            if not self._targeted(name, value.ndim):
                continue
            n_lead, n_in = _split(names, value.ndim)
            lead, ins, outs = value.shape[:n_lead], value.shape[n_lead : n_lead + n_in], value.shape[n_lead + n_in :]
            a = jax.random.normal(jax.random.fold_in(adapter_rng, i), (*lead, *ins, self.rank), jnp.float32)
            adapters[name.replace("/", ".")] = {
                "a": nn.Partitioned(a / math.sqrt(math.prod(ins)), (*names[: n_lead + n_in], None)),
                "b": nn.Partitioned(
                    jnp.zeros((*lead, self.rank, *outs), jnp.float32), (*names[:n_lead], None, *names[n_lead + n_in :])
                ),
            }
        if not adapters:
            raise ValueError(
                f"LoRA targets {self.targets} match no kernel of the {self.base_kind} in {self.base_dir} "
                f"(paths look like {param_path(boxed[0][0])!r})"
            )
        return {"params": {ADAPTERS: adapters, BASE: base}}

    def merged(self, params: Mapping[str, Any]) -> Any:
        """The base parameters with every adapted kernel replaced by W + scale * A @ B."""
        adapters = params[ADAPTERS]

        def merge(path, w):
            key = param_path(path).replace("/", ".")
            if key not in adapters:
                return w
            a, b = adapters[key]["a"], adapters[key]["b"]
            n_in, n_out = w.ndim - b.ndim + 1, w.ndim - a.ndim + 1
            lead = w.shape[: w.ndim - n_in - n_out]
            product = jnp.matmul(a.reshape(*lead, -1, self.rank), b.reshape(*lead, self.rank, -1))
            delta = (product * self.scale).reshape(w.shape)
            return (jax.lax.stop_gradient(w) + delta.astype(w.dtype)).astype(w.dtype)

        return jax.tree_util.tree_map_with_path(merge, params[BASE])

    # ---- training -----------------------------------------------------------------------------
    def optimizer_groups(self):
        return {ADAPTERS: {}, BASE: None}  # None: no optimiser, no state (training/optimizers.py)

    def frozen_params_source(self) -> Optional[tuple[str, str]]:
        source = fileio.join(self.base_dir, "checkpoints")
        return BASE, source if self.step is None else fileio.join(source, str(self.step))

    def loss_fn(self, params: Any, batch: Batch, dropout_rng: Optional[jax.Array]) -> tuple[jax.Array, Metrics]:
        return self.base.loss_fn(self.merged(params), batch, dropout_rng)

    def eval_fn(self, params: Any, batch: Batch) -> Metrics:
        return self.base.eval_fn(self.merged(params), batch)

    def predict_batch(self, params: Any, batch: Batch, rng: Optional[jax.Array] = None, **kwargs) -> jax.Array:
        return self.base.predict_batch(self.merged(params), batch, rng, **kwargs)

    def flops_per_example(self, input_shapes):
        return self.base.flops_per_example(input_shapes)

    def eval_outputs(self, params: Any, batch: Batch) -> dict[str, jax.Array]:
        return self.base.eval_outputs(self.merged(params), batch)

    def summarize_eval_outputs(self, outputs):
        return self.base.summarize_eval_outputs(outputs)

    def eval_media(self, params: Any, batch: Batch) -> dict[str, jax.Array]:
        return self.base.eval_media(self.merged(params), batch)

    def media_sample_rate(self) -> int:
        return self.base.media_sample_rate()

    def eval_warning(self, history):
        return self.base.eval_warning(history)
