"""JSON files that are whole or absent (written to a temporary name, then renamed), with numpy
scalars and arrays converted."""

from __future__ import annotations

import json
import os

import numpy as np


def write_json(path: str, data) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True, default=_json_default)
    os.replace(tmp, path)


def _json_default(x):
    if isinstance(x, (np.integer, np.floating, np.bool_)):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")
