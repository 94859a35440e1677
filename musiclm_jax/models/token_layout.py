"""One vocabulary shared by all token streams, through per-(stream, level) offsets.

    id 0            PAD
    id 1            BOS
    id 2            NULL_COND  (classifier-free guidance "no condition")
    then, stream by stream in order, level by level, each level's codebook as a contiguous range:
      mulan    levels 0..11  x 1024
      semantic level  0      x 1024
      acoustic levels 0..11  x 1024
    padded up to a multiple of 128 (unused ids are never targets and never sampled).

Raw codes (0 .. codebook_size-1, negative = padding) become global ids and back. Code arrays
are frame-major: [B, frames, levels] or already flattened [B, frames * levels]; the level of
flat position p is `first_level + p % num_levels`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

PAD_ID = 0
BOS_ID = 1
NULL_COND_ID = 2
NUM_SPECIAL_IDS = 3
# A raw code meaning "no condition here": it becomes NULL_COND_ID, as condition dropout makes
# it (a melody-conditioned stage asked for music without a tune gets these in place of melody codes).
NULL_CODE = -2

# (stream name, number of levels, codebook size)
DEFAULT_STREAMS: tuple[tuple[str, int, int], ...] = (
    ("mulan", 12, 1024),
    ("semantic", 1, 1024),
    ("acoustic", 12, 1024),
)


@dataclasses.dataclass(frozen=True)
class TokenLayout:
    """Per-stream id ranges in one vocabulary.

    `streams`: (name, num_levels, codebook_size) triples in vocabulary order;
    `codebook_size` may also be a tuple with one size per level.
    """

    streams: tuple = DEFAULT_STREAMS
    pad_to_multiple: int = 128

    def __post_init__(self):
        normalized = []
        names = set()
        for entry in self.streams:
            name, num_levels, sizes = entry
            if name in names:
                raise ValueError(f"TokenLayout: duplicate stream {name!r}")
            names.add(name)
            if num_levels <= 0:
                raise ValueError(f"TokenLayout: stream {name!r} needs >= 1 level, got {num_levels}")
            if isinstance(sizes, (int, np.integer)):
                sizes = (int(sizes),) * num_levels
            sizes = tuple(int(s) for s in sizes)
            if len(sizes) != num_levels or min(sizes) <= 0:
                raise ValueError(
                    f"TokenLayout: stream {name!r} codebook sizes {sizes} do not match {num_levels} levels"
                )
            normalized.append((name, int(num_levels), sizes))
        object.__setattr__(self, "streams", tuple(normalized))
        if self.pad_to_multiple <= 0:
            raise ValueError(f"pad_to_multiple must be positive, got {self.pad_to_multiple}")

    # --- sizes and offsets -------------------------------------------------------------------

    def _stream(self, stream: str):
        for entry in self.streams:
            if entry[0] == stream:
                return entry
        raise KeyError(f"unknown token stream {stream!r}; known: {[s[0] for s in self.streams]}")

    def num_levels(self, stream: str) -> int:
        return self._stream(stream)[1]

    def codebook_size(self, stream: str, level: int) -> int:
        return self._stream(stream)[2][self._check_level(stream, level)]

    def _check_level(self, stream: str, level: int) -> int:
        n = self.num_levels(stream)
        if not 0 <= level < n:
            raise ValueError(f"stream {stream!r} has levels 0..{n - 1}, got level {level}")
        return level

    def offset(self, stream: str, level: int = 0) -> int:
        """First global id of (stream, level)."""
        self._check_level(stream, level)
        offset = NUM_SPECIAL_IDS
        for name, _, sizes in self.streams:
            if name == stream:
                return offset + sum(sizes[:level])
            offset += sum(sizes)
        raise AssertionError("unreachable")

    @property
    def num_used_ids(self) -> int:
        return NUM_SPECIAL_IDS + sum(sum(sizes) for _, _, sizes in self.streams)

    @property
    def vocab_size(self) -> int:
        m = self.pad_to_multiple
        return -(-self.num_used_ids // m) * m

    def level_ranges(self, stream: str, first_level: int, num_levels: int) -> tuple[np.ndarray, np.ndarray]:
        """(lo, hi) int32 arrays [num_levels]: ids of level first_level + j are [lo[j], hi[j])."""
        self._check_span(stream, first_level, num_levels)
        lo = np.array([self.offset(stream, first_level + j) for j in range(num_levels)], np.int32)
        hi = lo + np.array([self.codebook_size(stream, first_level + j) for j in range(num_levels)], np.int32)
        return lo, hi

    def _check_span(self, stream: str, first_level: int, num_levels: int):
        n = self.num_levels(stream)
        if num_levels <= 0 or first_level < 0 or first_level + num_levels > n:
            raise ValueError(
                f"levels [{first_level}, {first_level + num_levels}) out of range for stream {stream!r} with {n} levels"
            )

    # --- codes <-> ids -----------------------------------------------------------------------

    def flatten(self, codes: Any, stream: str, first_level: int, num_levels: int) -> jax.Array:
        """[B, frames, levels] -> [B, frames * num_levels] frame-major; [B, N] passes through.

        A rank-3 array with more than `num_levels` levels (e.g. all 12 RVQ levels) is sliced to
        levels [first_level, first_level + num_levels); one with exactly `num_levels` levels is
        taken as already sliced.
        """
        codes = jnp.asarray(codes)
        if codes.ndim == 2:
            return codes
        if codes.ndim != 3:
            raise ValueError(f"{stream} codes must be [B, N] or [B, frames, levels], got shape {codes.shape}")
        levels = codes.shape[-1]
        if levels != num_levels:
            if levels < first_level + num_levels:
                raise ValueError(
                    f"{stream} codes have {levels} levels; need levels [{first_level}, "
                    f"{first_level + num_levels}) (or exactly {num_levels})"
                )
            codes = codes[..., first_level : first_level + num_levels]
        return codes.reshape(codes.shape[0], -1)

    def position_levels(self, length: int, first_level: int, num_levels: int, start: int = 0) -> np.ndarray:
        """Level (absolute) of flat positions [start, start + length)."""
        return first_level + (np.arange(start, start + length) % num_levels)

    def to_ids(self, codes: Any, stream: str, first_level: int = 0, num_levels: int = 1) -> jax.Array:
        """Raw codes -> global ids [B, N] (int32). NULL_CODE -> NULL_COND_ID; other negative
        codes (padding) -> PAD_ID."""
        self._check_span(stream, first_level, num_levels)
        flat = self.flatten(codes, stream, first_level, num_levels).astype(jnp.int32)
        lo, _ = self.level_ranges(stream, first_level, num_levels)
        offsets = jnp.asarray(lo)[jnp.arange(flat.shape[-1]) % num_levels]
        special = jnp.where(flat == NULL_CODE, NULL_COND_ID, PAD_ID)
        return jnp.where(flat >= 0, flat + offsets, special).astype(jnp.int32)

    def to_codes(self, ids: Any, stream: str, first_level: int = 0, num_levels: int = 1, start: int = 0) -> jax.Array:
        """Global ids [B, N] (flat position p is level first_level + (start + p) % num_levels)
        -> raw codes [B, N]; ids outside that level's range -> -1."""
        self._check_span(stream, first_level, num_levels)
        ids = jnp.asarray(ids).astype(jnp.int32)
        lo, hi = self.level_ranges(stream, first_level, num_levels)
        j = (start + jnp.arange(ids.shape[-1])) % num_levels
        lo_p, hi_p = jnp.asarray(lo)[j], jnp.asarray(hi)[j]
        legal = (ids >= lo_p) & (ids < hi_p)
        return jnp.where(legal, ids - lo_p, -1).astype(jnp.int32)

    def vocab_mask(self, stream: str, first_level: int, num_levels: int, positions: Any) -> jax.Array:
        """bool [len(positions), vocab_size]: the ids allowed at each flat target position.

        `positions` may be traced (decoding builds one row per step this way, O(vocab)).
        """
        lo, hi = self.level_ranges(stream, first_level, num_levels)
        j = jnp.asarray(positions, jnp.int32) % num_levels
        lo_p, hi_p = jnp.asarray(lo)[j], jnp.asarray(hi)[j]
        ids = jnp.arange(self.vocab_size, dtype=jnp.int32)
        return (ids >= lo_p[..., None]) & (ids < hi_p[..., None])
