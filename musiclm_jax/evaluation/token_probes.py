"""Attribute probes on token streams: where along the chain text -> MuLan -> semantic -> acoustic
-> audio does a prompt's attribute get lost?

A probe is a logistic regression from a clip's token statistics (one-hot MuLan codes per level;
histograms of semantic codes and of each acoustic level) to one attribute label, fit on the
tokens `musiclm precompute` cached for labelled synthetic clips. Applied to the tokens a stage
*generated* for a prompt, it tells whether that stage's output still carries the attribute the
prompt asked for, before the codec and the audio detectors add their own losses.

    probes = fit_probes(train_tokens, train_labels, attributes=('drums', 'register'))
    predictions = predict(probes, {'semantic': generated_semantic_tokens})
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import numpy as np

# The token streams a probe reads (see `features` for how each becomes a feature vector).
STREAMS = ("mulan", "semantic", "acoustic")


def features(stream: str, tokens: np.ndarray, codebook_size: int) -> np.ndarray:
    """[clips, dims] float32 features of `tokens`: MuLan [clips, levels] -> one-hot per level;
    semantic [clips, frames] -> code histogram; acoustic [clips, frames, levels] -> a histogram
    per level (counted, so memory is clips x levels x codes at any codebook size)."""
    tokens = np.asarray(tokens)
    if stream not in STREAMS:
        raise ValueError(f"unknown stream {stream!r}; streams: {STREAMS}")
    if tokens.size and (tokens.min() < 0 or tokens.max() >= codebook_size):
        raise ValueError(f"{stream} tokens must lie in [0, {codebook_size}), got [{tokens.min()}, {tokens.max()}]")
    if stream == "mulan":
        tokens = tokens[:, None, :]  # one "frame" per clip: the histogram is the one-hot code
    elif stream == "semantic":
        tokens = tokens[..., None]
    clips, frames, levels = tokens.shape
    # A code's bin: (clip, level, code) flattened; bincount counts them in one pass.
    bins = (np.arange(clips)[:, None, None] * levels + np.arange(levels)) * codebook_size + tokens
    counts = np.bincount(bins.ravel(), minlength=clips * levels * codebook_size)
    return (counts.reshape(clips, levels * codebook_size) / frames).astype(np.float32)


@dataclasses.dataclass
class Probe:
    stream: str
    attribute: str
    codebook_size: int
    model: object  # a fitted sklearn LogisticRegression
    train_accuracy: float

    def predict(self, tokens: np.ndarray) -> list:
        return list(self.model.predict(features(self.stream, tokens, self.codebook_size)))


def fit_probes(
    tokens: Mapping[str, np.ndarray],
    labels: Sequence[Mapping],
    *,
    codebook_sizes: Mapping[str, int],
    attributes: Sequence[str],
) -> dict[tuple[str, str], Probe]:
    """{(stream, attribute): Probe} for every stream in `tokens` ({stream: [clips, ...]}, one row
    per entry of `labels`) and attribute. Labels are compared as strings (True -> 'True')."""
    from sklearn.linear_model import LogisticRegression

    probes = {}
    for stream, array in tokens.items():
        if len(array) != len(labels):
            raise ValueError(f"{len(array)} {stream} rows for {len(labels)} labels")
        x = features(stream, array, codebook_sizes[stream])
        for attr in attributes:
            y = np.array([str(lab[attr]) for lab in labels])
            if len(set(y)) < 2:
                raise ValueError(f"the probe clips all have {attr} = {y[0]!r}: nothing to fit")
            model = LogisticRegression(max_iter=3000).fit(x, y)
            probes[stream, attr] = Probe(stream, attr, codebook_sizes[stream], model, float(model.score(x, y)))
    return probes


def predict(probes: Mapping[tuple[str, str], Probe], tokens: Mapping[str, np.ndarray]) -> dict[str, list[dict]]:
    """{stream: per clip {attribute: predicted label}} for the streams in `tokens` with probes.
    Probes compare labels as strings; 'True' / 'False' come back as bools (the synthetic
    source's drums), every other label as a string."""
    out: dict[str, list[dict]] = {}
    for (stream, attr), probe in probes.items():
        if stream not in tokens:
            continue
        rows = out.setdefault(stream, [{} for _ in range(len(tokens[stream]))])
        for row, label in zip(rows, probe.predict(tokens[stream])):
            row[attr] = {"True": True, "False": False}.get(label, label)
    return out
