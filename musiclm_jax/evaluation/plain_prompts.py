"""Adherence prompts written by hand the way people type them: everyday words, free word order, no
caption template. Keyed by (register, drums, tempo_class), three per combination. Many of their words
also occur in training captions (unlike the held-out caption family, whose words never do): they
measure what a user typing a plain request gets, not generalisation to unseen words."""

from __future__ import annotations

PLAIN_PROMPTS = {
    ("low", True, "slow"): (
        "slow, heavy groove with deep bass notes and a laid-back drum beat",
        "a dark, low-pitched tune that crawls along over soft drums",
        "deep low melody, slow tempo, with a drummer keeping a lazy beat",
    ),
    ("low", True, "medium"): (
        "a bass-heavy track at a steady walking pace with drums",
        "low notes and a mid-tempo drum groove, nothing too fast",
        "moderate beat, drums and a deep rumbling melody underneath",
    ),
    ("low", True, "fast"): (
        "fast and punchy, deep bass line with driving drums",
        "an energetic, low-register riff over quick drums",
        "quick rock-style drums with a booming low melody",
    ),
    ("low", False, "slow"): (
        "a gentle lullaby with deep, low notes and no percussion",
        "slow, calm bass melody on its own, no drums",
        "very slow and low, just the instrument, no beat at all",
    ),
    ("low", False, "medium"): (
        "a low, warm melody at a relaxed medium pace without any drums",
        "deep notes at a moderate tempo, no percussion",
        "mid-tempo tune down in the low range with no beat",
    ),
    ("low", False, "fast"): (
        "a fast, low-pitched line played solo with no drums",
        "quick deep notes running along, no percussion",
        "rapid bass melody without drums",
    ),
    ("mid", True, "slow"): (
        "slow song in the middle range with light drums",
        "a relaxed, unhurried melody, mid register, drums in the background",
        "chill slow beat with drums and a mid-range tune",
    ),
    ("mid", True, "medium"): (
        "a medium tempo pop tune with drums, melody in the middle range",
        "steady mid-tempo groove with a drum kit and a mid-range melody",
        "moderately paced song with a beat, notes neither high nor low",
    ),
    ("mid", True, "fast"): (
        "upbeat, fast dance track with drums and a mid-range melody",
        "lively and quick, drums going, melody in the middle register",
        "energetic fast beat with a mid-range lead",
    ),
    ("mid", False, "slow"): (
        "a slow, peaceful melody in the middle range, no drums",
        "calm and slow, mid-range notes, without percussion",
        "slow mid-register tune with no beat",
    ),
    ("mid", False, "medium"): (
        "a mid-range melody at a moderate pace, no percussion at all",
        "medium tempo, middle register, no drums",
        "walking-pace tune in the mid range without a beat",
    ),
    ("mid", False, "fast"): (
        "fast, lively melody in the middle register with no drums",
        "quick mid-range notes, solo, no percussion",
        "an up-tempo mid-range tune without drums",
    ),
    ("high", True, "slow"): (
        "slow, dreamy high notes over a soft drum beat",
        "a high-pitched melody taking its time, with drums",
        "slow tempo, bright high melody and gentle percussion",
    ),
    ("high", True, "medium"): (
        "high, bright melody at a moderate tempo with drums",
        "mid-tempo track with drums and a high-pitched lead",
        "steady beat with drums, melody up high",
    ),
    ("high", True, "fast"): (
        "fast, high-pitched melody with a driving drum beat",
        "quick and bright, high notes and energetic drums",
        "an upbeat track with drums and a high melody",
    ),
    ("high", False, "slow"): (
        "a calm, slow piece with high notes and no drums",
        "slow twinkling high melody, no percussion",
        "high, delicate notes played slowly, without a beat",
    ),
    ("high", False, "medium"): (
        "a high melody at a medium pace, no drums",
        "moderate tempo, high-pitched tune without percussion",
        "bright high notes at a walking pace, no beat",
    ),
    ("high", False, "fast"): (
        "quick, bright high notes with no drums",
        "fast high-pitched melody, no percussion at all",
        "an up-tempo tune up high without drums",
    ),
}
