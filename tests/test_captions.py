"""The caption generator (data/captions.py): captions agree with their labels, record what they
state, vary, keep the held-out family out of training, and feed augmentation and the prompts."""

import re

import numpy as np
import pytest

from musiclm_jax.data import captions, synthetic

OLD_KEYS = ("instrument", "tempo_class", "bpm", "key", "mode", "register", "drums", "loudness", "texture")


def _random_labels(n, seed=0):
    """Labels as the synthetic source draws them (every key), every third one reduced to the
    keys the source had before metre/style/accompaniment/dynamics/timbre_source."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        labels = synthetic.sample_labels(rng)
        labels["timbre_source"] = str(rng.choice(synthetic.TIMBRE_SOURCES))
        out.append({k: labels[k] for k in OLD_KEYS} if i % 3 == 0 else labels)
    return out


@pytest.fixture(scope="module")
def drawn():
    """(labels, Caption) pairs of both families, one caption per piece."""
    out = {}
    for family in captions.FAMILIES:
        rng = np.random.default_rng([1, captions.FAMILIES.index(family)])
        out[family] = [(lab, captions.make_caption(lab, rng, family)) for lab in _random_labels(1200, seed=2)]
    return out


def _has(text, phrase):
    return re.search(r"(?<![\w-])" + re.escape(phrase.lower()) + r"(?![\w-])", text.lower()) is not None


def test_no_caption_contradicts_its_labels(drawn):
    for family, pairs in drawn.items():
        for labels, c in pairs:
            assert captions.contradictions(c.text, labels) == [], (family, c.text, labels)
            # a few checks that do not use the generator's word lists
            low = c.text.lower()
            if labels["tempo_class"] == "slow":
                assert not re.search(r"\b(fast|quick|up-?tempo|allegro|brisk)\b", low), c.text
            if labels["tempo_class"] == "fast":
                assert not re.search(r"\b(slow|slowly|adagio|unhurried)\b", low), c.text
            if labels["drums"]:
                assert not re.search(r"\b(no|without) (drums|percussion|beat)|drumless|beatless|kitless", low), c.text
            else:
                assert not re.search(r"(?<!no )(?<!without )\bdrums\b|drum kit|backbeat", low), c.text
            if labels["register"] != "low":
                assert not re.search(r"(?<![\w-])(low|deep|low-pitched)(?![\w-])", low), c.text
            if labels["register"] != "high":
                assert not re.search(r"(?<![\w-])(high|high-pitched)(?![\w-])", low), c.text
            for number in re.findall(r"(\d+) (?:bpm|beats)", low):
                assert int(number) == labels["bpm"], c.text
            key = re.search(r"\b([A-G]#?) (major|minor)\b(?!-key| key)", c.text)
            if key:
                assert key.groups() == (labels["key"], labels["mode"]), c.text
            if "accompaniment" not in labels:
                assert not re.search(r"backed by|accompan|solo\b|unaccompanied", low), c.text


def test_the_checker_finds_contradictions():
    labels = {"instrument": "piano", "tempo_class": "slow", "bpm": 70, "key": "A", "mode": "minor"}
    labels.update(register="low", drums=False, loudness="soft", texture="melody", accompaniment=None)
    assert captions.contradictions("A slow, deep piano melody with no drums", labels) == []
    assert ("tempo_class", "fast") in captions.contradictions("A fast piano melody", labels)
    assert ("drums", "drums") in captions.contradictions("Piano, drums, slow", labels)
    assert captions.contradictions("A piano melody backed by strings", labels)  # it has no accompaniment
    assert captions.contradictions("Piano in C minor at 70 BPM", labels) == [("key", "C minor")]
    assert captions.contradictions("Piano in A minor at 120 BPM", labels) == [("bpm", "120")]
    assert captions.contradictions("A gentle lullaby", dict(labels, drums=True))  # a scene's conditions
    assert captions.contradictions("A slow waltz", labels)  # no style label: none may be stated


def test_mentioned_is_what_the_text_states(drawn):
    counts = {a: 0 for a in captions.ATTRIBUTES}
    for family, pairs in drawn.items():
        for labels, c in pairs:
            assert set(c.mentioned) == captions.mentioned_by_phrases(c.text, labels, family), (c.text, c.mentioned)
            assert set(c.mentioned) <= set(labels), (c.mentioned, labels)
            assert len(c.mentioned) >= 2
            for a in c.mentioned:
                counts[a] += 1
    assert all(n > 20 for n in counts.values()), counts  # every attribute gets stated


def test_required_attributes_are_always_stated():
    rng = np.random.default_rng(3)
    for labels in _random_labels(200, seed=4):
        for family in captions.FAMILIES:
            c = captions.make_caption(labels, rng, family, require=("register", "drums", "tempo_class"))
            assert {"register", "drums", "tempo_class"} <= set(c.mentioned)
            assert {"register", "drums", "tempo_class"} <= captions.mentioned_by_phrases(c.text, labels, family)
    with pytest.raises(ValueError, match="cannot state"):
        captions.make_caption({"instrument": "piano", "drums": True}, rng, require=("register",))


def test_heldout_family_never_appears_in_training_captions(drawn):
    heldout = set().union(*captions.lexicon("heldout").values()) | captions.frame_markers("heldout")
    train_phrases = set().union(*captions.lexicon("train").values())
    assert len(heldout) > 150
    assert not heldout & train_phrases
    train_text = [c.text for _, c in drawn["train"]]
    for labels in _random_labels(300, seed=9):  # and the augmentation variants
        train_text += [c.text for c in captions.caption_variants(labels, np.random.default_rng(len(train_text)))]
    blob = "\n".join(train_text).lower()
    found = [p for p in heldout if p.lower() in blob and any(_has(t, p) for t in train_text)]
    assert found == []
    # while held-out captions do use them (and key names spelled their own way)
    heldout_text = "\n".join(c.text for _, c in drawn["heldout"])
    assert sum(_has(heldout_text, p) for p in heldout) > 0.6 * len(heldout)


def test_captions_vary():
    for family in captions.FAMILIES:
        pairs = [(lab, None) for lab in _random_labels(2000, seed=5)]
        texts = {captions.caption_for(lab, np.random.default_rng([i, 8]), family) for i, (lab, _) in enumerate(pairs)}
        assert len(texts) >= 1995
        one = _random_labels(1, seed=6)[0]
        rng = np.random.default_rng(7)
        same_piece = [captions.caption_for(one, rng, family) for _ in range(300)]
        assert len(set(same_piece)) > 200
        openings = {t.split()[0].lower() for t in texts}
        assert len(openings) > 40 if family == "train" else len(openings) > 25


def test_training_clips_carry_distinct_caption_variants():
    ex = synthetic.render(0, 5, sample_rate=8000, duration_s=0.5)
    assert len(ex.caption_variants) == captions.NUM_VARIANTS == len(set(ex.caption_variants))
    assert ex.caption == ex.caption_variants[0] == synthetic.caption_of(0, 5)
    for text in ex.caption_variants:
        assert captions.contradictions(text, ex.labels) == [], text
    source = synthetic.SyntheticSource(sample_rate=8000, duration_s=0.5, num_examples=3, num_validation_examples=2)
    assert list(source.captions("train", 1, variants=True)) == [
        c.text for c in synthetic.captions_of(0, 0, num=captions.NUM_VARIANTS)
    ]
    assert len(list(source.captions("train", variants=True))) == 3 * captions.NUM_VARIANTS


def test_audio_task_draws_a_caption_per_visit(tmp_path):
    import seqio

    from musiclm_jax.data import audio_tasks, text_vocab

    source = synthetic.SyntheticSource(sample_rate=4000, duration_s=0.25, num_examples=3, num_validation_examples=2)
    vocab = text_vocab.caption_vocabulary(str(tmp_path), source, vocab_size=200)
    name = audio_tasks.register_audio_task(
        "test_caption_draws", source, text_vocabulary=vocab, shuffle_buffer_size=None
    )
    task = seqio.get_mixture_or_task(name)
    seen: dict = {}
    for ex in task.get_dataset(None, split="train", shuffle=False, num_epochs=6, seed=3).as_numpy_iterator():
        seen.setdefault(ex["id"].decode(), set()).add(ex["caption"].decode())
        assert len(ex["heldout_text_tokens"]) > 0
    for ident, texts in seen.items():
        variants = synthetic.captions_of(0, int(ident.split("-")[-1]), num=captions.NUM_VARIANTS)
        assert texts <= {c.text for c in variants}
        assert len(texts) >= 2, texts  # six visits, eight variants
    heldout_words = set().union(*captions.lexicon("heldout").values())
    for ex in task.get_dataset(None, split="validation", shuffle=False, num_epochs=2).as_numpy_iterator():
        seed, index = synthetic.SPLIT_SEEDS["validation"], int(ex["id"].decode().split("-")[-1])
        assert ex["caption"].decode() == synthetic.caption_of(seed, index)  # validation keeps its one caption
        heldout = ex["heldout_caption"].decode()
        assert captions.contradictions(heldout, synthetic.labels_of(seed, index)) == []
        assert any(_has(heldout, w) for w in heldout_words), heldout


def test_caption_vocabulary_is_trained_on_the_variants(tmp_path):
    from musiclm_jax.data import text_vocab

    calls = []

    class Source:
        name = "recording"

        def captions(self, split, limit=None, *, variants=False):
            calls.append(variants)
            return ["a slow piano melody", "fast drums"] * 5

    text_vocab.caption_vocabulary(str(tmp_path), Source(), vocab_size=40)
    assert calls == [True]


def test_prompts_are_balanced_and_state_register_drums_tempo():
    from musiclm_jax.evaluation import eval_sets
    from musiclm_jax.evaluation.plain_prompts import PLAIN_PROMPTS

    prompts = eval_sets.held_out_prompts(54)
    combos = [(p["labels"]["register"], p["labels"]["drums"], p["labels"]["tempo_class"]) for p in prompts]
    assert len(set(combos)) == 18 and all(combos.count(c) == 3 for c in set(combos))
    assert {(r, d) for r, d, _ in combos[:6]} == {(r, d) for r in ("low", "mid", "high") for d in (True, False)}
    assert len({t for _, _, t in combos[:6]}) == 3
    assert len({p["index"] for p in prompts}) == 54 and len({p["caption"] for p in prompts}) == 54
    for p in prompts:
        assert p["family"] == "heldout"
        assert {"register", "drums", "tempo_class"} <= set(p["mentioned"])
        assert set(p["mentioned"]) == captions.mentioned_by_phrases(p["caption"], p["labels"], "heldout")
        assert captions.contradictions(p["caption"], p["labels"]) == []
        assert p["labels"] == synthetic.labels_of(synthetic.SPLIT_SEEDS["validation"], p["index"])
    train = eval_sets.held_out_prompts(18, family="train")
    assert [p["index"] for p in train] == [p["index"] for p in prompts[:18]]  # same pieces, other words
    assert all(set(p["mentioned"]) == captions.mentioned_by_phrases(p["caption"], p["labels"], "train") for p in train)
    plain = eval_sets.held_out_prompts(54, family="plain")
    assert [p["index"] for p in plain] == [p["index"] for p in prompts]
    assert len({p["caption"] for p in plain}) == 54  # every hand-written prompt once
    for p in plain:  # written for their combination (free text: the lexicon's checker cannot parse it)
        combo = (p["labels"]["register"], p["labels"]["drums"], p["labels"]["tempo_class"])
        assert p["caption"] in PLAIN_PROMPTS[combo] and p["family"] == "plain"
    with pytest.raises(ValueError, match="family"):
        eval_sets.held_out_prompts(4, family="other")


def test_mulan_eval_reports_heldout_retrieval_beside_training_family():
    from musiclm_jax.models.mulan import MuLan, MuLanConfig

    rng = np.random.default_rng(0)
    audio = rng.standard_normal((16, 8))
    audio /= np.linalg.norm(audio, axis=1, keepdims=True)
    noise = rng.standard_normal((16, 8))
    outputs = {"audio_embedding": audio, "text_embedding": audio, "heldout_text_embedding": noise}
    out = MuLan(MuLanConfig()).summarize_eval_outputs(outputs)
    assert out["text_to_audio_recall@1"] == 1.0
    assert out["heldout_text_to_audio_recall@1"] < 0.5 and out["heldout_text_to_audio_recall@10"] < 1.0
    assert "heldout_text_to_audio_recall@1" not in MuLan(MuLanConfig()).summarize_eval_outputs(
        {"audio_embedding": audio, "text_embedding": audio}
    )
