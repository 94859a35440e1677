"""Captioned reference clips to evaluate text-to-music on, and attribute adherence.

    held_out_prompts(num_prompts, family=...)    captions of validation pieces stating register,
                                                 drums and tempo, balanced over their combinations;
                                                 held-out-family phrasing by default
    synthetic_eval_set(num_items, seconds)       those pieces rendered as references (labels known:
                                                 adherence)
    task_eval_set(task, split, num_items, ...)   any captioned raw-audio seqio task (MusicCaps)
    adherence(items, detected)                   per attribute: detector agrees with the caption

An `EvalItem` is one caption with the reference audio it describes: FAD compares the
references' embeddings with the generations', KLD the classifier's label distributions of
each reference with those of the music generated from its caption.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np

from musiclm_jax.data import captions, synthetic
from musiclm_jax.evaluation import attributes, metrics
from musiclm_jax.evaluation.plain_prompts import PLAIN_PROMPTS

# Attributes whose adherence is measured, under the detectors' names.
ATTRIBUTES = ("register", "drums", "tempo_class", "loudness", "mode")


@dataclasses.dataclass
class EvalItem:
    """A caption, the mono float32 reference clip it describes, and (on the synthetic source)
    the piece's labels and the attributes its caption states."""

    id: str
    caption: str
    reference: np.ndarray
    sample_rate: int
    labels: dict = dataclasses.field(default_factory=dict)
    mentioned: list = dataclasses.field(default_factory=list)


# What every adherence prompt states, and the combinations the prompts are balanced over.
PROMPT_ATTRIBUTES = ("register", "drums", "tempo_class")
# Prompt families: the caption generator's two, and hand-written everyday prompts (plain_prompts.py).
PROMPT_FAMILIES = (*captions.FAMILIES, "plain")


def _combo_order() -> list[tuple]:
    """The 18 (register, drums, tempo_class) combinations, interleaved so that any 6 consecutive
    ones cover every (register, drums) pair and spread the tempi."""
    registers, drums, tempi = ("low", "mid", "high"), (True, False), ("slow", "medium", "fast")
    return [(registers[i % 3], drums[i % 2], tempi[(i // 6 + i // 2) % 3]) for i in range(18)]


def held_out_prompts(
    num_prompts: int, *, train_examples: int = 0, search: int = 4000, family: str = "heldout"
) -> list[dict]:
    """Captions of validation-split pieces (never rendered for training) that state register,
    drums and tempo, balanced over the 18 register x drums x tempo combinations (any prefix of
    the list spreads them too). `family`: 'heldout' (default: words and frames no training
    caption uses, data/captions.py), 'train' (the training family's phrasings, for adherence
    reported on both) or 'plain' (hand-written everyday prompts, plain_prompts.py, each paired
    with a piece of its combination). Captions equal to one of the first `train_examples` training captions are
    skipped. Each: caption, labels, mentioned (the label keys the caption states, as the caption
    generator recorded them), index (of the validation piece), family."""
    if family not in PROMPT_FAMILIES:
        raise ValueError(f"family must be one of {PROMPT_FAMILIES}, got {family!r}")
    seed = synthetic.SPLIT_SEEDS["validation"]
    train = set(synthetic.caption_of(synthetic.SPLIT_SEEDS["train"], i) for i in range(train_examples))
    combos = _combo_order()
    per_combo = -(-num_prompts // len(combos))
    by_combo: dict = {c: [] for c in combos}
    for index in range(search):
        labels = synthetic.labels_of(seed, index)
        combo = (labels["register"], bool(labels["drums"]), labels["tempo_class"])
        if len(by_combo[combo]) >= per_combo:
            continue
        if family == "plain":
            plain = PLAIN_PROMPTS[combo]
            text, mentioned = plain[len(by_combo[combo]) % len(plain)], PROMPT_ATTRIBUTES
        else:
            caption = synthetic.captions_of(seed, index, family=family, require=PROMPT_ATTRIBUTES)[0]
            text, mentioned = caption.text, caption.mentioned
        if text in train:
            continue
        by_combo[combo].append(
            {
                "caption": text,
                "labels": labels,
                "mentioned": list(mentioned),
                "index": index,
                "family": family,
            }
        )
        if all(len(v) >= per_combo for v in by_combo.values()):
            break
    short = [c for c, v in by_combo.items() if len(v) < per_combo]
    if short:
        found = sum(len(v) for v in by_combo.values())
        raise ValueError(
            f"only {found} of the first {search} validation pieces suit ({short[0]} has "
            f"{len(by_combo[short[0]])} of {per_combo}); ask for fewer prompts or search further"
        )
    return [by_combo[combos[i % len(combos)]][i // len(combos)] for i in range(num_prompts)]


def synthetic_item(prompt: dict, seconds: float, sample_rate: int) -> EvalItem:
    """A `held_out_prompts` entry with its validation piece rendered as the reference."""
    audio = synthetic.render(
        synthetic.SPLIT_SEEDS["validation"], prompt["index"], sample_rate=sample_rate, duration_s=seconds
    ).audio
    return EvalItem(
        id=f"validation/{prompt['index']}",
        caption=prompt["caption"],
        reference=audio,
        sample_rate=sample_rate,
        labels=prompt["labels"],
        mentioned=prompt["mentioned"],
    )


def synthetic_eval_set(
    num_items: int, seconds: float, *, sample_rate: int = 16000, train_examples: int = 0, family: str = "heldout"
) -> list[EvalItem]:
    """`held_out_prompts` rendered: the validation pieces themselves are the references."""
    if num_items < 2:
        raise ValueError(f"an eval set needs at least 2 items (FAD fits a covariance), got {num_items}")
    prompts = held_out_prompts(num_items, train_examples=train_examples, family=family)
    return [synthetic_item(p, seconds, sample_rate) for p in prompts]


def task_eval_set(
    task: str, split: str, num_items: int, seconds: float, *, sample_rate: Optional[int] = None
) -> list[EvalItem]:
    """The first `num_items` captioned clips of a raw-audio seqio task (e.g. 'musiccaps' from
    gin/data/musiccaps.gin), each cut or zero-padded to `seconds`. `sample_rate`: the task's
    rate (default: its source's). Clips with an empty caption are skipped."""
    import seqio

    from musiclm_jax.data import audio_tasks, tasks

    tasks.validate_name(task)
    if sample_rate is None:
        sample_rate = getattr(audio_tasks.source_of(task), "sample_rate", None)
        if not sample_rate:
            raise ValueError(f"the sample rate of task {task!r} is unknown; pass sample_rate")
    ds = seqio.get_mixture_or_task(task).get_dataset(sequence_length=None, split=split, shuffle=False)
    length = int(round(seconds * sample_rate))
    items = []
    with audio_tasks.source_errors():
        for ex in ds.as_numpy_iterator():
            caption = ex["caption"].decode() if isinstance(ex["caption"], bytes) else str(ex["caption"])
            if not caption.strip():
                continue
            audio = ex["audio"][: int(ex["audio_length"])] if "audio_length" in ex else ex["audio"]
            audio = np.pad(audio[:length], (0, max(0, length - len(audio)))).astype(np.float32)
            ident = ex.get("id", str(len(items)))
            items.append(
                EvalItem(
                    id=ident.decode() if isinstance(ident, bytes) else str(ident),
                    caption=caption,
                    reference=audio,
                    sample_rate=sample_rate,
                )
            )
            if len(items) >= num_items:
                break
    if len(items) < 2:
        raise ValueError(f"task {task!r} split {split!r} gave {len(items)} captioned clips; an eval needs >= 2")
    return items


def adherence(items: Sequence, detected: Sequence[dict]) -> dict:
    """Per attribute, over the items whose caption states it: accuracy of the detected label
    against the caption's, uniform chance (1 / classes), and the shuffled chance (the accuracy
    expected if the music were paired with captions at random: sum over classes of
    P(caption) x P(detected)). `items` are EvalItems or dicts with labels and mentioned."""

    def field(item, name):
        return item[name] if isinstance(item, dict) else getattr(item, name)

    out = {}
    for attr in ATTRIBUTES:
        pairs = [(field(p, "labels")[attr], d[attr]) for p, d in zip(items, detected) if attr in field(p, "mentioned")]
        if not pairs:
            continue
        want, got = zip(*pairs)
        values = synthetic.LABEL_VALUES[attr]
        p_want = np.array([want.count(v) for v in values]) / len(want)
        p_got = np.array([got.count(v) for v in values]) / len(got)
        out[attr] = {
            "n": len(pairs),
            "accuracy": float(np.mean([w == g for w, g in pairs])),
            "chance": 1.0 / len(values),
            "shuffled_chance": float(p_want @ p_got),
        }
    return metrics.with_significance(out)  # n, successes, binomial p; above_chance = significant


def detect(audio: np.ndarray, sample_rate: int) -> dict:
    """The attribute detectors' labels of one clip, JSON-able."""
    d = attributes.detect_all(audio, sample_rate)
    return {k: (bool(v) if isinstance(v, (bool, np.bool_)) else v) for k, v in d.items()}


def optional_labels(items: Sequence[EvalItem]) -> Optional[list[dict]]:
    """The items' labels when every item has them (the synthetic source), else None."""
    return [i.labels for i in items] if items and all(i.labels for i in items) else None
