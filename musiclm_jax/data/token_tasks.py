"""Generated token tasks: stand-in token data with a known answer, for smoke runs and tests.

`permuted_copy` imitates the semantic stage's shapes (12 MuLan tokens -> semantic tokens)
with targets that are a fixed function of the prefix: semantic[i] = perm[mulan[i % 12]].
A model that reads its condition reaches ~100% held-out token accuracy; one that ignores
it cannot beat 1/num_values on the first 12 target tokens.
"""

from __future__ import annotations

import numpy as np

EVAL_SEED_OFFSET = 1_000_003  # eval examples come from a disjoint seed stream


def task_permutation(seed: int = 0, codebook_size: int = 1024) -> np.ndarray:
    """The permutation is a property of the task (fixed by seed), not of the example."""
    return np.random.default_rng([seed, 7]).permutation(codebook_size).astype(np.int32)


def permuted_copy_example(
    index: int,
    *,
    seed: int = 0,
    split: str = "train",
    num_condition_tokens: int = 12,
    num_target_tokens: int = 24,
    num_values: int = 32,
    codebook_size: int = 1024,
) -> dict[str, np.ndarray]:
    """One example: {'mulan_tokens': int32[C], 'semantic_tokens': int32[T]} (raw codes)."""
    if not 0 < num_values <= codebook_size:
        raise ValueError(f"num_values must be in (0, {codebook_size}], got {num_values}")
    stream = seed + (EVAL_SEED_OFFSET if split != "train" else 0)
    rng = np.random.default_rng([stream, index])
    cond = rng.integers(0, num_values, size=(num_condition_tokens,), dtype=np.int32)
    perm = task_permutation(seed, codebook_size)
    positions = np.arange(num_target_tokens) % num_condition_tokens
    return {"mulan_tokens": cond, "semantic_tokens": perm[cond[positions]]}


def permuted_copy_batch(start: int, batch_size: int, **kwargs) -> dict[str, np.ndarray]:
    """Examples [start, start + batch_size) stacked into a batch."""
    examples = [permuted_copy_example(start + i, **kwargs) for i in range(batch_size)]
    return {k: np.stack([e[k] for e in examples]) for k in examples[0]}
