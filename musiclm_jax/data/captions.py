"""Captions for the synthetic source: text that agrees with a piece's labels.

`caption_for(labels, rng)` fills a template's slots from the labels (synonyms drawn from rng), so
no caption contradicts the piece it describes.
"""

from __future__ import annotations

import numpy as np

_INSTRUMENT_WORDS = {
    "piano": ("piano", "grand piano", "acoustic piano", "piano keys"),
    "organ": ("organ", "church organ", "electric organ", "drawbar organ"),
    "plucked": ("plucked guitar", "nylon-string guitar", "plucked lute", "harp-like plucked string"),
    "square_lead": ("square lead", "square-wave synth", "chiptune lead", "8-bit synth lead"),
    "strings": ("strings", "string ensemble", "orchestral strings", "violins"),
    "bell": ("bells", "FM bell", "chimes", "glassy bell synth"),
    "bass": ("bass", "bass synth", "deep bass", "synth bass"),
}
_TEMPO_WORDS = {
    "slow": ("slow", "unhurried", "languid", "slow-paced"),
    "medium": ("mid-tempo", "moderate", "medium-paced", "walking-pace"),
    "fast": ("fast", "up-tempo", "quick", "driving"),
}
_MOOD_WORDS = {
    ("slow", "major"): ("calm", "peaceful", "gentle", "serene"),
    ("slow", "minor"): ("sad", "melancholic", "mournful", "somber"),
    ("medium", "major"): ("cheerful", "warm", "bright", "relaxed"),
    ("medium", "minor"): ("wistful", "moody", "pensive", "dark"),
    ("fast", "major"): ("happy", "energetic", "joyful", "upbeat"),
    ("fast", "minor"): ("tense", "dramatic", "urgent", "brooding"),
}
_REGISTER_WORDS = {
    "low": ("low", "deep", "low-register"),
    "mid": ("mid-range", "middle-register", "mid-register"),
    "high": ("high", "high-pitched", "bright high-register"),
}
_LOUDNESS_WORDS = {
    "soft": ("soft", "quiet", "gentle-volume"),
    "medium": ("moderately loud", "medium-volume", "balanced-volume"),
    "loud": ("loud", "powerful", "full-volume"),
}
_TEXTURE_WORDS = {
    "melody": ("melody", "solo melody", "single-line tune", "lead line"),
    "melody_chords": (
        "melody over chords",
        "tune with chords",
        "melody with chordal accompaniment",
        "chords and melody",
    ),
    "arpeggio": ("arpeggio", "arpeggiated pattern", "broken-chord figure", "rolling arpeggios"),
}
_DRUM_WORDS = {
    True: ("with drums", "with a steady beat", "over a drum kit", "with kick, snare and hi-hats"),
    False: ("no drums", "without drums", "with no percussion", "without any beat"),
}
_GENRE = {
    "square_lead": "electronic",
    "bell": "ambient",
    "organ": "gospel-tinged",
    "piano": "piano",
    "plucked": "acoustic",
    "strings": "orchestral",
    "bass": "bass-driven",
}

# 24 templates; every slot they name is filled from the labels, so no caption contradicts them.
_TEMPLATES = (
    "a {tempo}, {mood} {instrument} {texture} in {key} {mode}, {drums}",
    "{mood} {genre} piece: {register} {instrument} {texture} at {bpm} BPM, {drums}",
    "{tempo} {instrument} {texture} in {key} {mode} {drums}, {loudness} and {mood}",
    "{loudness} {instrument} playing a {mood} {texture} {drums}",
    "an {energy} track with a {instrument} {texture} and {drums_short} at {bpm} BPM",
    "{mood} music in {key} {mode}: a {register} {instrument} plays a {tempo} {texture}, {drums}",
    "{instrument}, {key} {mode}, {bpm} bpm, {drums}, {mood}",
    "a {register}, {loudness} {instrument} {texture} that feels {mood}; {drums}",
    "{genre} {texture} on {instrument}, {tempo} tempo around {bpm} BPM, {drums}",
    "solo {instrument} in a {mood} {mode} key ({key}), {tempo}, {drums}",
    "a {mood} tune in {key} {mode} for {instrument}, {loudness}, {drums}",
    "{drums_cap}: a {tempo} {register} {instrument} {texture} in {key} {mode}",
    "instrumental, {instrument}, {texture}, {mood}, {tempo} ({bpm} BPM), {drums}",
    "this {tempo} piece features a {loudness} {instrument} {texture} in {key} {mode}, {drums}",
    "{energy} {genre} music: {instrument} {texture}, {drums}, in {mode}",
    "a {register} {instrument} carries a {mood} {texture}; the tempo is {tempo}, {drums}",
    "{key} {mode} {instrument} {texture}, {loudness}, {mood}, {drums}",
    "listen to a {mood}, {tempo} {texture} played on {instrument} {drums}",
    "{instrument} {texture} at {bpm} beats per minute in {key} {mode}, {register}, {drums}",
    "a short {mood} {genre} clip: {loudness} {instrument}, {tempo}, {drums}",
    "{tempo} and {mood}: {instrument} in {key} {mode}, {texture}, {drums}",
    "a {register} {texture} in {mode} played on {instrument}, {loudness}, {drums}",
    "{mood} {mode}-key {instrument} {texture} with a {tempo} pulse, {drums}",
    "{energy} {instrument} {texture}, {bpm} BPM, {key} {mode}, {drums}",
)


def caption_for(labels: dict, rng: np.random.Generator) -> str:
    """A caption in one of the templates with synonyms drawn from rng; agrees with `labels`."""

    def pick(options):
        return str(options[rng.integers(len(options))])

    tempo, mode = labels["tempo_class"], labels["mode"]
    drums = pick(_DRUM_WORDS[labels["drums"]])
    energy = {"slow": ("laid-back", "relaxed"), "medium": ("easygoing", "steady"), "fast": ("energetic", "lively")}[
        tempo
    ]
    slots = {
        "tempo": pick(_TEMPO_WORDS[tempo]),
        "mood": pick(_MOOD_WORDS[(tempo, mode)]),
        "instrument": pick(_INSTRUMENT_WORDS[labels["instrument"]]),
        "texture": pick(_TEXTURE_WORDS[labels["texture"]]),
        "key": labels["key"],
        "mode": mode,
        "drums": drums,
        "drums_cap": drums[0].upper() + drums[1:],
        "drums_short": "drums" if labels["drums"] else "no drums",
        "bpm": labels["bpm"],
        "register": pick(_REGISTER_WORDS[labels["register"]]),
        "loudness": pick(_LOUDNESS_WORDS[labels["loudness"]]),
        "genre": _GENRE[labels["instrument"]],
        "energy": pick(energy),
    }
    text = pick(_TEMPLATES).format(**slots)
    if text.startswith("an ") and slots["energy"][0] not in "aeiou":
        text = "a " + text[3:]
    return text[0].upper() + text[1:]
