"""Counting bad inputs per category, so a data source never fails (or shrinks) silently.

Every raw-audio source owns a `BadInputReport`. Each bad file is counted in one category
and logged with its path (one line each, capped per category so a broken collection does
not flood the log); `summary()` says what happened at the end of a split, and
`check_usable()` turns "nothing usable" into a clear `NoUsableExamplesError`.

| category            | meaning                                                     | action   |
|---------------------|-------------------------------------------------------------|----------|
| `corrupt`           | bytes libsndfile cannot decode (bad header, damaged stream)  | skipped  |
| `truncated`         | file shorter than its header says, or than the clip needs   | skipped  |
| `empty_file`        | zero-length file                                            | skipped  |
| `silent`            | the clip's peak is below `SILENT_PEAK` (1e-4)               | skipped  |
| `non_finite`        | NaN / Inf samples (float files); skipped, not patched,      | skipped  |
|                     | because a NaN usually means the whole render/export broke    |          |
| `unknown_extension` | not an audio extension we decode                             | skipped  |
| `missing_file`      | manifest/CSV entry whose audio file does not exist           | skipped  |
| `missing_caption`   | no caption; kept with caption "" unless a source requires one| repaired |
| `resampled`         | file sample rate != the source's rate; resampled (soxr_hq)   | repaired |
| `downmixed`         | more than one channel; averaged to mono                      | repaired |
| `too_short`         | decoded clip shorter than the source's `min_seconds`         | skipped  |
| `bad_manifest_line` | manifest/CSV line that does not parse (logged with its line) | skipped  |

`missing_caption` is "skipped" instead of repaired when a source is built with
`require_caption=True`; the report records which happened (`skipped()` / `repaired()`).
Skipped inputs are logged at WARNING, repairs at INFO (resampling a 44.1 kHz collection
is routine, so it should not drown the warnings that matter).
"""

from __future__ import annotations

import collections
import logging

# Decoding's categories are defined where decoding fails (audio.io); the rest are the sources'.
from musiclm_jax.audio.io import (
    CORRUPT,
    EMPTY_FILE,
    MISSING_FILE,
    NON_FINITE,
    SILENT,
    TRUNCATED,
    UNKNOWN_EXTENSION,
)

logger = logging.getLogger(__name__)

MISSING_CAPTION = "missing_caption"
RESAMPLED = "resampled"
DOWNMIXED = "downmixed"
TOO_SHORT = "too_short"
BAD_MANIFEST_LINE = "bad_manifest_line"

CATEGORIES = (
    CORRUPT,
    TRUNCATED,
    EMPTY_FILE,
    SILENT,
    NON_FINITE,
    UNKNOWN_EXTENSION,
    MISSING_FILE,
    MISSING_CAPTION,
    RESAMPLED,
    DOWNMIXED,
    TOO_SHORT,
    BAD_MANIFEST_LINE,
)
# Categories whose example is kept after the repair (missing_caption depends on the source).
REPAIR_CATEGORIES = frozenset({RESAMPLED, DOWNMIXED})

DEFAULT_LOG_LIMIT = 20
_EXAMPLES_IN_SUMMARY = 3


class NoUsableExamplesError(ValueError):
    """A source/split produced zero examples; the message names the source and why."""


class BadInputReport:
    """Per-category counts of bad inputs, with the paths logged (capped per category)."""

    def __init__(self, source_name: str = "", *, log_limit: int = DEFAULT_LOG_LIMIT):
        self.source_name = source_name
        self.log_limit = log_limit
        self.counts: collections.Counter[str] = collections.Counter()
        self.paths: dict[str, list[str]] = collections.defaultdict(list)
        self._skipped: collections.Counter[str] = collections.Counter()

    def add(self, category: str, path: str, detail: str = "", *, skipped: bool | None = None) -> None:
        """Counts one bad input. `skipped` defaults to "not a repair category"."""
        if category not in CATEGORIES:
            raise ValueError(f"unknown bad-input category {category!r}; expected one of {CATEGORIES}")
        if skipped is None:
            skipped = category not in REPAIR_CATEGORIES
        self.counts[category] += 1
        if skipped:
            self._skipped[category] += 1
        if len(self.paths[category]) < _EXAMPLES_IN_SUMMARY:
            self.paths[category].append(str(path))
        self._log(category, str(path), detail, skipped)

    def _log(self, category: str, path: str, detail: str, skipped: bool) -> None:
        n = self.counts[category]
        level = logging.WARNING if skipped else logging.INFO
        prefix = f"[{self.source_name}] " if self.source_name else ""
        if n <= self.log_limit:
            action = "skipped" if skipped else "repaired"
            logger.log(
                level, "%sbad input %s (%s): %s%s", prefix, category, action, path, f": {detail}" if detail else ""
            )
        elif n == self.log_limit + 1:
            logger.log(
                level,
                "%sbad input %s: ... more (only the first %d are logged; see the summary)",
                prefix,
                category,
                self.log_limit,
            )

    def __bool__(self) -> bool:
        return bool(self.counts)

    def skipped(self) -> dict[str, int]:
        return {c: self._skipped[c] for c in CATEGORIES if self._skipped[c]}

    def repaired(self) -> dict[str, int]:
        return {c: self.counts[c] - self._skipped[c] for c in CATEGORIES if self.counts[c] - self._skipped[c]}

    def as_dict(self) -> dict[str, int]:
        """{category: count} for every category seen, in `CATEGORIES` order."""
        return {c: self.counts[c] for c in CATEGORIES if self.counts[c]}

    def summary(self) -> str:
        """A multi-line human summary: skipped and repaired counts with example paths."""
        head = f"bad inputs for {self.source_name!r}" if self.source_name else "bad inputs"
        if not self.counts:
            return f"{head}: none"
        lines = [
            f"{head}: {sum(self._skipped.values())} skipped, "
            f"{sum(self.counts.values()) - sum(self._skipped.values())} repaired"
        ]
        for title, table in (("skipped", self.skipped()), ("repaired", self.repaired())):
            for category, count in table.items():
                shown = ", ".join(self.paths[category])
                more = " ..." if self.counts[category] > len(self.paths[category]) else ""
                lines.append(f"  {title:8s} {category:17s} {count:6d}  e.g. {shown}{more}")
        return "\n".join(lines)

    def check_usable(self, source_name: str, num_ok: int, split: str | None = None, *, hint: str = "") -> None:
        """Raises NoUsableExamplesError when `num_ok == 0`, naming the source and the causes."""
        if num_ok > 0:
            return
        where = f"source {source_name!r}" + (f" split {split!r}" if split else "")
        causes = self.skipped()
        reason = ", ".join(f"{c}={n}" for c, n in causes.items()) if causes else "no input entries found"
        raise NoUsableExamplesError(f"{where} has no usable example: {reason}" + (f" ({hint})" if hint else ""))
