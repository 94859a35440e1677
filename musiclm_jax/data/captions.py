"""Captions for the synthetic source: text that agrees with a piece's labels, phrased many ways.

    make_caption(labels, rng, family='train', require=())  -> Caption(text, mentioned, family)
    caption_for(labels, rng, family='train')               -> the text alone
    caption_variants(labels, rng, n, family='train')       -> n distinct Captions of one piece
    contradictions(text, labels)                           -> what in a text disagrees with labels

A caption states a random subset of the piece's attributes (at least two), each with one of many
phrasings: adjectives ("slow", "deep"), phrases after the noun ("with no percussion", "in A minor",
"backed by strings"), whole clauses ("the tempo is slow", "there are no drums"), tags, moods tied to
mode and tempo ("sad" only for slow minor pieces) and scenes tied to several attributes ("a gentle
lullaby" only for slow, soft pieces without drums). The pieces are assembled in random order into
one of many frames: a noun phrase, a tag list ("piano, sad, slow"), sentences, a request ("I want
..."), "music for ...", "a track where ...". `Caption.mentioned` is the record of which label keys
the text states (key and bpm included), so nothing has to infer it.

Two families with disjoint words and frames: `train` (what MuLan is trained on: the most common
ways people write) and `heldout` (other synonyms and frames, never in a training caption), so the
gap between retrieval or adherence on the two measures how far the text tower generalises beyond
the phrasings it saw.

Labels: instrument, tempo_class, bpm, key, mode, register, drums, loudness, texture, and where
present metre, style, accompaniment, dynamics, timbre_source (keys that are absent are never
stated). No caption contradicts its labels: a phrase of one value of an attribute never appears
for another value (`contradictions` checks it, negations included).
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Iterable, Optional, Sequence

import numpy as np

FAMILIES = ("train", "heldout")
# The label keys a caption can state, in the order `Caption.mentioned` lists them.
ATTRIBUTES = (
    "instrument",
    "tempo_class",
    "bpm",
    "key",
    "mode",
    "register",
    "drums",
    "loudness",
    "texture",
    "metre",
    "style",
    "accompaniment",
    "dynamics",
    "timbre_source",
)
NUM_VARIANTS = 8  # captions per training clip for augmentation (Example.caption_variants)


@dataclasses.dataclass(frozen=True)
class Caption:
    text: str
    mentioned: tuple  # label keys the text states, in ATTRIBUTES order
    family: str = "train"

    def __str__(self) -> str:
        return self.text


# ---------------------------------------------------------------------------------------------
# Lexicon: family -> attribute -> value -> {kind: phrases}. Kinds: "adj" (before the noun),
# "noun" (instrument, texture, style: can head the noun phrase), "post" (after the noun), "clause"
# (a sentence of its own), "tag" (a bare tag). Phrases of one value never appear for another.

_T, _H = "train", "heldout"

_INSTRUMENT = {
    _T: {
        "piano": ("piano", "grand piano", "upright piano", "acoustic piano", "piano keys"),
        "organ": ("organ", "church organ", "pipe organ", "Hammond organ", "drawbar organ"),
        "plucked": (
            "guitar",
            "acoustic guitar",
            "nylon-string guitar",
            "classical guitar",
            "plucked guitar",
            "fingerpicked guitar",
        ),
        "square_lead": (
            "synth",
            "synth lead",
            "lead synth",
            "square-wave synth",
            "chiptune lead",
            "8-bit synth",
            "retro synth lead",
        ),
        "strings": ("strings", "string section", "string ensemble", "violin", "violins", "orchestral strings"),
        "bell": ("bells", "chimes", "glockenspiel", "tubular bells", "bell tones"),
        "bass": ("bass", "bass guitar", "electric bass", "synth bass", "bass line"),
        "brass": ("brass", "trumpet", "trumpets", "brass section", "horn section", "horns", "trombone"),
        "choir": ("choir", "voices", "choral voices", "vocal ensemble", "singers", "vocal choir"),
    },
    _H: {
        "piano": ("pianoforte", "concert grand", "baby grand"),
        "organ": ("harmonium", "pump organ", "cathedral organ"),
        "plucked": ("six-string", "fingerstyle guitar", "spanish guitar"),
        "square_lead": ("NES-style bleeps", "pulse-wave lead", "gameboy tones"),
        "strings": ("fiddles", "bowed strings", "chamber strings"),
        "bell": ("carillon", "celesta", "music box"),
        "bass": ("double bass", "four-string", "low-end groove bass"),
        "brass": ("cornet", "flugelhorn", "bugle"),
        "choir": ("chorale", "chanting voices", "massed singers"),
    },
}

_TEMPO = {
    _T: {
        "slow": {
            "adj": (
                "slow",
                "slow-paced",
                "unhurried",
                "leisurely",
                "languid",
                "downtempo",
                "laid-back",
                "relaxing",
                "chill",
            ),
            "post": ("at a slow tempo", "at a slow pace", "taken slowly", "played slowly"),
            "clause": ("the tempo is slow", "it moves slowly", "it takes its time", "the pace is slow"),
            "tag": ("slow tempo", "slow"),
        },
        "medium": {
            "adj": ("mid-tempo", "moderate-tempo", "medium-paced", "moderately paced", "walking-pace"),
            "post": ("at a moderate tempo", "at a medium tempo", "at a walking pace", "at a relaxed medium pace"),
            "clause": ("the tempo is moderate", "the tempo is medium", "it moves at a walking pace"),
            "tag": ("medium tempo", "mid-tempo"),
        },
        "fast": {
            "adj": ("fast", "quick", "up-tempo", "fast-paced", "rapid", "lively", "energetic", "driving"),
            "post": ("at a fast tempo", "at a quick pace", "played fast", "at a rapid pace"),
            "clause": ("the tempo is fast", "it moves quickly", "the pace is fast"),
            "tag": ("fast tempo", "fast", "uptempo"),
        },
    },
    _H: {
        "slow": {
            "adj": ("plodding", "adagio", "crawling", "sleepy-paced"),
            "post": ("at a snail's pace", "in no hurry", "dawdling along"),
            "clause": ("its pace is glacial", "it dawdles"),
        },
        "medium": {
            "adj": ("andante", "moderato", "strolling"),
            "post": ("at a strolling speed", "at a comfortable clip", "at an ambling gait"),
            "clause": ("its pace is a steady stroll", "it ambles along"),
        },
        "fast": {
            "adj": ("brisk", "speedy", "allegro", "breakneck"),
            "post": ("at a brisk clip", "racing along", "at full gallop"),
            "clause": ("its pace is breakneck", "it races along"),
        },
    },
}
_BPM = {
    _T: {
        "post": ("at {bpm} BPM", "at {bpm} bpm", "around {bpm} BPM", "at {bpm} beats per minute"),
        "tag": ("{bpm} BPM", "{bpm} bpm"),
        "clause": ("the tempo is {bpm} BPM", "it runs at {bpm} bpm"),
    },
    _H: {
        "post": ("with the metronome at {bpm}", "clocking {bpm} beats a minute"),
        "tag": ("metronome {bpm}", "{bpm} beats a minute"),
        "clause": ("the metronome reads {bpm}",),
    },
}
_MODE = {
    _T: {
        "major": {"adj": ("major-key",), "post": ("in a major key",), "tag": ("major key", "major")},
        "minor": {"adj": ("minor-key",), "post": ("in a minor key",), "tag": ("minor key", "minor")},
    },
    _H: {
        "major": {"adj": ("ionian",), "post": ("with a major tonality",), "tag": ("major tonality",)},
        "minor": {"adj": ("aeolian",), "post": ("with a minor tonality",), "tag": ("minor tonality",)},
    },
}
_KEY = {
    _T: {
        "post": ("in {key} {mode}", "in the key of {key} {mode}"),
        "tag": ("{key} {mode}", "key of {key} {mode}"),
        "clause": ("it is in {key} {mode}", "the key is {key} {mode}"),
    },
    _H: {
        "post": ("centred on {key} {mode}", "rooted in {key} {mode}"),
        "tag": ("tonic {key} {mode}",),
        "clause": ("home base is {key} {mode}",),
    },
}
# Moods are tied to (tempo_class, mode): stating one states both.
_MOOD = {
    _T: {
        ("slow", "major"): ("calm", "peaceful", "serene", "tender", "dreamy", "soothing"),
        ("slow", "minor"): ("sad", "melancholic", "mournful", "somber", "gloomy"),
        ("medium", "major"): ("cheerful", "warm", "sunny", "pleasant", "content"),
        ("medium", "minor"): ("wistful", "moody", "pensive", "bittersweet"),
        ("fast", "major"): ("happy", "joyful", "upbeat", "playful", "bouncy"),
        ("fast", "minor"): ("tense", "dramatic", "urgent", "anxious", "frantic"),
    },
    _H: {
        ("slow", "major"): ("tranquil", "placid", "halcyon"),
        ("slow", "minor"): ("grieving", "sorrowful", "heartbroken", "tearful"),
        ("medium", "major"): ("carefree", "good-natured", "contented"),
        ("medium", "minor"): ("reflective", "nostalgic", "yearning"),
        ("fast", "major"): ("jubilant", "exuberant", "gleeful"),
        ("fast", "minor"): ("agitated", "ominous", "restless"),
    },
}
_REGISTER = {
    _T: {
        "low": {
            "adj": ("low", "deep", "low-pitched", "low-register", "bassy", "rumbling"),
            "post": ("in a low register", "in the low register", "with deep, low notes", "down low", "with low notes"),
            "clause": ("the notes are low", "it sits low", "the notes are deep and low"),
            "tag": ("low register", "low notes", "deep"),
        },
        "mid": {
            "adj": ("mid-range", "mid-register", "middle-register", "midrange"),
            "post": ("in the middle register", "in the mid range", "in a comfortable middle range", "around middle C"),
            "clause": ("the notes sit in the middle range", "the notes stay mid-range"),
            "tag": ("mid register", "middle register", "mid-range"),
        },
        "high": {
            "adj": ("high", "high-pitched", "high-register", "bright high", "twinkling"),
            "post": ("in a high register", "in the high register", "up high", "with high notes", "in the upper range"),
            "clause": ("the notes are high", "it sits up high", "the notes are high-pitched"),
            "tag": ("high register", "high notes", "high-pitched"),
        },
    },
    _H: {
        "low": {
            "adj": ("cavernous", "sonorous", "baritone-range"),
            "post": ("down in the depths", "in the basement octaves", "near the floor of the keyboard"),
            "clause": ("everything lives in the cellar octaves",),
        },
        "mid": {
            "adj": ("tenor-range", "centre-range"),
            "post": ("in the heart of the keyboard", "at a medium pitch", "in the central octaves"),
            "clause": ("everything hovers around the centre of the keyboard",),
        },
        "high": {
            "adj": ("soprano-range", "piercing", "stratospheric"),
            "post": ("in the treble", "way up in the top octaves", "in the stratosphere"),
            "clause": ("everything floats in the top octaves",),
        },
    },
}
# Doubled adjectives ("deep, low notes"): pairs drawn from these.
_REGISTER_PAIR = {
    _T: {
        "low": ("low", "deep", "low-pitched"),
        "mid": ("mid-range", "middle-register"),
        "high": ("high", "high-pitched"),
    },
    _H: {
        "low": ("cavernous", "sonorous"),
        "mid": ("tenor-range", "centre-range"),
        "high": ("piercing", "stratospheric"),
    },
}
_DRUMS = {
    _T: {
        True: {
            "adj": ("drum-driven", "drum-backed"),
            "post": (
                "with drums",
                "with a drum kit",
                "over a steady beat",
                "with a backbeat",
                "with kick, snare and hi-hats",
                "with percussion",
                "with a beat",
                "with a drum beat",
                "with punchy drums",
                "with heavy drums",
                "over a drum machine",
            ),
            "clause": ("the drums keep time", "there are drums", "a drum kit plays along", "there's a steady beat"),
            "tag": ("drums", "percussion", "beat", "with drums"),
        },
        False: {
            "adj": ("drumless", "beatless", "percussion-free"),
            "post": (
                "with no drums",
                "without drums",
                "without percussion",
                "with no beat at all",
                "without any beat",
                "with no percussion",
            ),
            "clause": ("there are no drums", "there is no percussion", "no drums at all", "there's no beat at all"),
            "tag": ("no drums", "no percussion", "no beat"),
        },
    },
    _H: {
        True: {
            "adj": ("kit-driven", "cymbal-heavy"),
            "post": ("with a thumping kit", "with tom-toms and cymbals", "over a pounding kit"),
            "clause": ("a drummer pounds away", "the kit thumps along"),
        },
        False: {
            "adj": ("kitless",),
            "post": ("minus any kit", "with the drummer sitting out", "with nothing percussive"),
            "clause": ("the drummer sits this one out", "nothing percussive is heard"),
        },
    },
}
_LOUDNESS = {
    _T: {
        "soft": {
            "adj": ("soft", "quiet", "gentle", "hushed", "delicate", "subdued", "mellow"),
            "post": ("played softly", "played quietly", "at a quiet volume", "barely above a whisper"),
            "clause": ("it is quiet", "the volume is soft", "it's played softly"),
        },
        "medium": {
            "adj": ("medium-volume", "mid-volume"),
            "post": ("at a moderate volume", "at a normal volume", "at medium volume"),
            "clause": ("the volume is moderate", "the volume is medium"),
        },
        "loud": {
            "adj": ("loud", "powerful", "thunderous", "full-volume", "intense"),
            "post": ("played loudly", "at full volume", "cranked up"),
            "clause": ("it is loud", "the volume is loud", "it's played loudly"),
        },
    },
    _H: {
        "soft": {"adj": ("whispered", "pianissimo", "murmuring"), "post": ("at a murmur", "turned way down")},
        "medium": {"adj": ("mezzo-forte",), "post": ("at conversational volume", "at an everyday level")},
        "loud": {
            "adj": ("fortissimo", "blaring", "deafening"),
            "post": ("turned up to eleven", "rattling the windows"),
        },
    },
}
_TEXTURE = {
    _T: {
        "melody": {
            "noun": ("melody", "simple melody", "melodic line", "single-line melody", "lead melody"),
            "clause": ("it is just a melody", "a single melodic line carries it"),
        },
        "melody_chords": {
            "noun": ("melody over chords", "melody with chords", "chords and melody", "melody over block chords"),
            "clause": ("a melody sits over chords", "there are chords under the melody"),
            "tag": ("chords",),
        },
        "arpeggio": {
            "noun": ("arpeggios", "arpeggio", "arpeggiated pattern", "broken chords", "rolling arpeggios"),
            "adj": ("arpeggiated",),
            "clause": ("it is built on arpeggios", "the chords are broken into arpeggios"),
        },
    },
    _H: {
        "melody": {"noun": ("monophonic line", "lone tune"), "clause": ("a lone line wanders unharmonised",)},
        "melody_chords": {"noun": ("harmonised tune", "homophonic setting"), "clause": ("triads support the tune",)},
        "arpeggio": {"noun": ("rippling figuration", "spread triads"), "clause": ("triads ripple note by note",)},
    },
}
_METRE = {
    _T: {
        "3/4": {
            "adj": ("3/4", "triple-time"),
            "post": ("in 3/4", "in 3/4 time", "in triple time", "with three beats to the bar"),
            "tag": ("3/4 time", "3/4"),
        },
        "4/4": {
            "adj": ("4/4",),
            "post": ("in 4/4", "in 4/4 time", "in common time", "with four beats to the bar"),
            "tag": ("4/4 time", "4/4"),
        },
    },
    _H: {
        "3/4": {"adj": ("three-four",), "post": ("in triple meter", "with a one-two-three lilt")},
        "4/4": {"adj": ("four-four",), "post": ("in quadruple meter", "counted one-two-three-four")},
    },
}
_STYLE = {
    _T: {
        "rock": {"adj": ("rock", "rock-style"), "noun": ("rock song", "rock track"), "post": ("with a rock feel",)},
        "waltz": {"adj": ("waltz-like",), "noun": ("waltz",), "post": ("in the style of a waltz",)},
        "ballad": {"adj": ("ballad-style",), "noun": ("ballad", "love ballad"), "post": ("in a ballad style",)},
        "march": {"adj": ("march-like", "marching"), "noun": ("march",), "post": ("in the style of a march",)},
    },
    _H: {
        "rock": {"adj": ("arena-rock",), "noun": ("rock and roll number",), "post": ("with garage-band swagger",)},
        "waltz": {"adj": ("viennese",), "noun": ("valse",), "post": ("fit for a ballroom turn",)},
        "ballad": {"adj": ("torch-song",), "noun": ("torch song", "love song")},
        "march": {"adj": ("parade-ground",), "noun": ("parade tune", "processional")},
    },
}
_DYNAMICS = {
    _T: {
        "steady": {
            "post": ("at an even volume", "with even dynamics", "at a constant level"),
            "clause": ("the volume stays the same", "the volume never changes"),
        },
        "crescendo": {
            "adj": ("building", "swelling"),
            "post": (
                "that gets louder",
                "that builds up",
                "growing louder",
                "with a crescendo",
                "building to a climax",
            ),
            "clause": ("it gets louder and louder", "it builds up gradually", "it grows louder toward the end"),
        },
        "diminuendo": {
            "adj": ("fading",),
            "post": ("that gets quieter", "that fades away", "with a diminuendo", "dying away"),
            "clause": ("it gets quieter", "it fades out", "it slowly dies away", "it grows quieter toward the end"),
        },
    },
    _H: {
        "steady": {"post": ("unwavering in level", "with flat dynamics"), "clause": ("its level never wavers",)},
        "crescendo": {"adj": ("mounting",), "post": ("climbing in volume", "with ever-rising intensity")},
        "diminuendo": {"adj": ("ebbing",), "post": ("ebbing away", "tapering off")},
    },
}
_ACCOMPANIED = {  # {w}: an instrument phrase of the accompaniment
    _T: {
        "post": ("backed by {w}", "accompanied by {w}", "with {w} accompaniment", "with {w} in the background"),
        "clause": ("{w} can be heard underneath", "you can hear {w} in the background"),
        "tag": ("{w} backing", "plus {w}"),
    },
    _H: {
        "post": ("supported by {w}", "alongside {w}"),
        "clause": ("one can make out {w} beneath",),
        "tag": ("{w} in support",),
    },
}
_UNACCOMPANIED = {  # accompaniment None and no drums
    _T: {
        "adj": ("solo", "unaccompanied"),
        "post": ("on its own", "with no accompaniment", "all alone"),
        "clause": ("nothing else plays", "no other instruments join in"),
        "tag": ("solo",),
    },
    _H: {"adj": ("lone-voiced",), "post": ("entirely by itself", "with nothing else at all")},
}
_TIMBRE = {
    _T: {
        "additive": {"adj": ("synthesized", "synthetic", "electronic-sounding")},
        "sampled": {"adj": ("sampled", "realistic", "natural-sounding", "lifelike")},
    },
    _H: {
        "additive": {"adj": ("computer-generated", "oscillator-built")},
        "sampled": {"adj": ("true-to-life", "authentic-sounding")},
    },
}
# Scenes: phrases that state several attributes at once. (conditions, mentioned, phrases); a
# condition is a label key and the values it allows. "head" phrases replace the noun, "frame"
# ones hold a noun phrase ("{np}") or stand alone.
_SCENES = {
    _T: (
        (
            {"tempo_class": ("slow",), "drums": (False,), "loudness": ("soft",)},
            ("tempo_class", "drums", "loudness"),
            ("lullaby", "gentle lullaby", "bedtime lullaby", "sleep music", "music to fall asleep to"),
        ),
        (
            {"tempo_class": ("slow",), "drums": (False,), "loudness": ("soft",)},
            ("tempo_class", "drums", "loudness"),
            ("meditation music", "music for meditation", "relaxing spa music"),
        ),
        (
            {"tempo_class": ("fast",), "drums": (True,), "loudness": ("loud",)},
            ("tempo_class", "drums", "loudness"),
            ("workout music", "music for the gym", "workout track"),
        ),
        (
            {"tempo_class": ("medium", "fast"), "drums": (True,)},
            ("drums",),
            ("dance track", "dance number", "dance tune"),
        ),
        (
            {"tempo_class": ("slow", "medium"), "drums": (False,), "loudness": ("soft", "medium")},
            ("drums",),
            ("study music", "music to study to", "background music for reading"),
        ),
        (
            {"tempo_class": ("fast",), "mode": ("major",), "drums": (True,)},
            ("tempo_class", "mode", "drums"),
            ("party music", "party anthem"),
        ),
        ({"instrument": ("square_lead",)}, ("instrument",), ("video game music", "retro game soundtrack")),
        (
            {"tempo_class": ("slow",), "drums": (False,), "loudness": ("soft", "medium")},
            ("tempo_class", "drums"),
            ("ambient music", "ambient piece"),
        ),
        (
            {"tempo_class": ("slow",), "mode": ("minor",)},
            ("tempo_class", "mode"),
            ("rainy-day song", "music for a rainy day"),
        ),
    ),
    _H: (
        (
            {"tempo_class": ("slow",), "drums": (False,), "loudness": ("soft",)},
            ("tempo_class", "drums", "loudness"),
            ("cradle song", "nap-time music", "yoga-class backdrop"),
        ),
        (
            {"tempo_class": ("fast",), "drums": (True,), "loudness": ("loud",)},
            ("tempo_class", "drums", "loudness"),
            ("treadmill soundtrack", "cardio playlist filler"),
        ),
        ({"tempo_class": ("medium", "fast"), "drums": (True,)}, ("drums",), ("club floor-filler",)),
        (
            {"tempo_class": ("slow", "medium"), "drums": (False,), "loudness": ("soft", "medium")},
            ("drums",),
            ("homework backdrop", "library ambience"),
        ),
        (
            {"tempo_class": ("fast",), "mode": ("major",), "drums": (True,)},
            ("tempo_class", "mode", "drums"),
            ("birthday-bash tune", "celebration number"),
        ),
        ({"instrument": ("square_lead",)}, ("instrument",), ("arcade soundtrack", "retro console jingle")),
        ({"tempo_class": ("slow",), "mode": ("minor",)}, ("tempo_class", "mode"), ("grey-afternoon lament",)),
    ),
}
_HEADS = {  # the noun when neither instrument+texture nor style nor a scene supplies it
    _T: ("piece", "track", "song", "tune", "clip", "composition", "instrumental"),
    _H: ("opus", "cue", "excerpt", "vignette"),
}
_SCENE_CLAUSE = {_T: ("it is {}", "it would make {}", "think {}"), _H: ("it would suit {}",)}
_SCENE_POST = {_T: ("perfect as {}", "good as {}", "like {}"), _H: ("befitting {}",)}
_FRAMES = {
    # {np}: a noun phrase with its article; {np0}: without; {tags}; {sents}: sentences; {clauses}
    _T: (
        "{np}",
        "{np}",
        "{np0}",
        "{np}.",
        "{tags}",
        "{tags}",
        "{np}. {sents}",
        "{np0}. {sents}",
        "a track where {clauses}",
        "a piece where {clauses}",
        "I want {np}",
        "give me {np}",
        "play {np}",
        "looking for {np}",
        "can you make {np}",
        "generate {np}",
        "I'd like {np}",
        "{np}, please",
        "{np} - {tags}",
        "{np0}: {tags}",
        "make me {np}. {sents}",
        "{np}; {clauses}",
        "music: {tags}",
    ),
    _H: (
        "imagine {np}",
        "picture this: {np}",
        "my brief: {tags}",
        "envisage {np}",
        "soundtrack idea - {np}",
        "{np}, if you would",
        "I'm after {np}",
        "compose {np}",
        "a cue in which {clauses}",
        "keywords => {tags}",
        "{tags} (that's the vibe)",
        "hoping for {np}. {sents}",
    ),
}
_CLAUSE_JOIN = {_T: (" and ", ", ", "; "), _H: (" whilst ", " as well as ")}


def _family_check(family: str) -> str:
    if family not in FAMILIES:
        raise ValueError(f"caption family must be one of {FAMILIES}, got {family!r}")
    return family


def _key_name(key: str, family: str) -> str:
    return key.replace("#", "-sharp") if family == _H else key


def _instrument_words(instrument: str, family: str) -> tuple:
    return _INSTRUMENT[family][instrument]


@dataclasses.dataclass
class _Fragment:
    """One stated attribute group: its phrasings by kind, and the label keys it states."""

    mentions: tuple
    adj: tuple = ()
    noun: tuple = ()
    post: tuple = ()
    clause: tuple = ()
    tag: tuple = ()


def _fragments(labels: dict, family: str) -> dict:
    """name -> _Fragment for every attribute (group) the labels allow stating."""
    f: dict = {}
    tempo, mode = labels.get("tempo_class"), labels.get("mode")
    if "instrument" in labels:
        words = _instrument_words(labels["instrument"], family)
        forms = {
            _T: ("it is played on {}", "it features {}", "the main instrument is {}"),
            _H: ("it is performed on {}",),
        }
        clause = tuple(c.format(w) for c in forms[family] for w in words)
        f["instrument"] = _Fragment(("instrument",), noun=words, clause=clause, tag=words)
    if tempo in _TEMPO[family]:
        d = _TEMPO[family][tempo]
        f["tempo_class"] = _Fragment(("tempo_class",), d.get("adj", ()), (), d.get("post", ()), d.get("clause", ()))
        f["tempo_class"].tag = d.get("tag", d.get("adj", ()))
    if "bpm" in labels:
        d = {k: tuple(p.format(bpm=labels["bpm"]) for p in v) for k, v in _BPM[family].items()}
        f["bpm"] = _Fragment(("tempo_class", "bpm"), post=d["post"], clause=d["clause"], tag=d["tag"])
    if mode in _MODE[family]:
        d = _MODE[family][mode]
        f["mode"] = _Fragment(("mode",), d["adj"], (), d["post"], (), d["tag"])
        if "key" in labels:
            k = {
                kind: tuple(p.format(key=_key_name(labels["key"], family), mode=mode) for p in v)
                for kind, v in _KEY[family].items()
            }
            f["key"] = _Fragment(("key", "mode"), post=k["post"], clause=k["clause"], tag=k["tag"])
    if (tempo, mode) in _MOOD[family]:
        words = _MOOD[family][(tempo, mode)]
        forms = {_T: ("it feels {}", "the mood is {}"), _H: ("the atmosphere is {}",)}[family]
        f["mood"] = _Fragment(
            ("tempo_class", "mode"), adj=words, clause=tuple(c.format(w) for c in forms for w in words), tag=words
        )
    if labels.get("register") in _REGISTER[family]:
        d = _REGISTER[family][labels["register"]]
        f["register"] = _Fragment(("register",), d["adj"], (), d["post"], d["clause"], d.get("tag", d["adj"]))
    if labels.get("drums") in (True, False):
        d = _DRUMS[family][bool(labels["drums"])]
        f["drums"] = _Fragment(("drums",), d["adj"], (), d["post"], d["clause"], d.get("tag", d["post"]))
    if labels.get("loudness") in _LOUDNESS[family]:
        d = _LOUDNESS[family][labels["loudness"]]
        f["loudness"] = _Fragment(("loudness",), d["adj"], (), d["post"], d.get("clause", ()), d["adj"])
    if labels.get("texture") in _TEXTURE[family]:
        d = _TEXTURE[family][labels["texture"]]
        f["texture"] = _Fragment(
            ("texture",), d.get("adj", ()), d["noun"], (), d["clause"], d.get("tag", ()) + d["noun"]
        )
    if labels.get("metre") in _METRE[family]:
        d = _METRE[family][labels["metre"]]
        f["metre"] = _Fragment(("metre",), d["adj"], (), d["post"], (), d.get("tag", d["post"]))
    if labels.get("style") in _STYLE[family]:
        d = _STYLE[family][labels["style"]]
        f["style"] = _Fragment(("style",), d["adj"], d["noun"], d.get("post", ()), (), d["noun"])
    if "accompaniment" in labels:
        acc = labels["accompaniment"]
        if acc is not None and "instrument" in labels:
            words = _instrument_words(acc, family)
            d = {k: tuple(p.format(w=w) for p in v for w in words) for k, v in _ACCOMPANIED[family].items()}
            f["accompaniment"] = _Fragment(("accompaniment",), post=d["post"], clause=d["clause"], tag=d["tag"])
        elif acc is None and labels.get("drums") is False:
            d = _UNACCOMPANIED[family]
            f["accompaniment"] = _Fragment(
                ("accompaniment", "drums"), d["adj"], (), d["post"], d.get("clause", ()), d.get("tag", d["adj"])
            )
    if labels.get("dynamics") in _DYNAMICS[family]:
        d = _DYNAMICS[family][labels["dynamics"]]
        f["dynamics"] = _Fragment(("dynamics",), d.get("adj", ()), (), d["post"], d.get("clause", ()), d["post"])
    if labels.get("timbre_source") in _TIMBRE[family]:
        d = _TIMBRE[family][labels["timbre_source"]]
        f["timbre_source"] = _Fragment(("timbre_source",), d["adj"], tag=d["adj"])
    return f


def _scenes(labels: dict, family: str) -> list:
    return [
        (mentions, phrases)
        for conds, mentions, phrases in _SCENES[family]
        if all(k in labels and labels[k] in allowed for k, allowed in conds.items())
    ]


# How likely each attribute group is to be stated (before `require`).
_STATE_P = {
    "instrument": 0.7,
    "tempo_class": 0.55,
    "bpm": 0.12,
    "key": 0.2,
    "mode": 0.25,
    "mood": 0.4,
    "register": 0.5,
    "drums": 0.55,
    "loudness": 0.35,
    "texture": 0.35,
    "metre": 0.15,
    "style": 0.4,
    "accompaniment": 0.3,
    "dynamics": 0.25,
    "timbre_source": 0.15,
}


_COUNT_P = (0.15, 0.25, 0.25, 0.2, 0.1, 0.05)  # how many groups a caption states: 2, 3, ..., 7
_PLURAL = {"strings", "violins", "bells", "chimes", "horns", "voices", "singers", "keys", "tones", "fiddles"}
_PLURAL |= {"bleeps", "arpeggios", "chords", "triads", "brass", "choir"}


def _is_plural(np_text: str) -> bool:
    """Whether a noun phrase takes no article: its first noun is a plural or a mass noun."""
    first = re.split(r" (?:on|played|with|over|for|featuring|and)\b", np_text)[0]
    return first.split()[-1].lower() in _PLURAL if first.split() else False


def _article(np_text: str) -> str:
    return (
        "an " if re.match(r"[aeiouAEIOU8]", np_text) and not re.match(r"(?i)uni|use|one", np_text) else "a "
    ) + np_text


def _fix_articles(text: str) -> str:
    text = re.sub(r"\b([Aa]) (?=[aeiouAEIOU8](?!ni|se|ne))", lambda m: m.group(1) + "n ", text)
    return re.sub(r"\b([Aa])n (?=[^aeiouAEIOU8\W])", lambda m: m.group(1) + " ", text)


def make_caption(
    labels: dict,
    rng: np.random.Generator,
    family: str = "train",
    *,
    require: Sequence[str] = (),
) -> Caption:
    """A caption of `labels` in `family` ('train' or 'heldout') drawn with `rng`. `require`: label
    keys the caption must state (e.g. ('register', 'drums', 'tempo_class') for adherence prompts)."""
    family = _family_check(family)
    frags = _fragments(labels, family)
    for key in require:
        if key not in {m for fr in frags.values() for m in fr.mentions}:
            raise ValueError(f"labels {labels} cannot state {key!r}")

    def pick(options):
        return options[int(rng.integers(len(options)))]

    # Which groups to state: each with its probability; then each required key through one group.
    names = list(frags)
    weights = np.array([_STATE_P.get(n, 0.2) for n in names])
    count = min(len(names), int(rng.choice(len(_COUNT_P), p=_COUNT_P)) + 2)
    chosen = [names[i] for i in rng.choice(len(names), count, replace=False, p=weights / weights.sum())]
    stated = {m for name in chosen for m in frags[name].mentions}
    for key in require:
        if key not in stated:
            options = [n for n, fr in frags.items() if key in fr.mentions and n not in chosen]
            # prefer the plain group of the key itself (a mood states tempo and mode at once)
            name = key if key in options and rng.random() < 0.8 else pick(options)
            chosen.append(name)
            stated |= set(frags[name].mentions)
    if "key" in chosen and "mode" in chosen:
        chosen.remove("mode")
    if "bpm" in chosen and "tempo_class" in chosen and rng.random() < 0.5:
        chosen.remove("tempo_class")
    while len(chosen) < 2:  # a caption says at least two things
        rest = [n for n in frags if n not in chosen]
        if not rest:
            break
        chosen.append(pick(rest))
    chosen = [chosen[i] for i in rng.permutation(len(chosen))]

    # A scene, sometimes, when the labels fit one (it states several attributes at once).
    scene = None
    scenes = _scenes(labels, family)
    if scenes and rng.random() < 0.25:
        mentions, phrases = pick(scenes)
        scene = (tuple(mentions), pick(phrases))
    mentioned = {m for n in chosen for m in frags[n].mentions} | set(scene[0] if scene else ())

    frame = pick(_FRAMES[family])
    style = "np" if "{np" in frame else "tags" if "{tags}" in frame else "clauses"
    adjs, posts, nouns, clauses, tags = [], [], {}, [], []
    for name in chosen:
        fr = frags[name]
        if style == "tags":
            tags.append(pick(fr.tag or fr.adj or fr.post or fr.noun))
        elif style == "clauses":
            clauses.append(_clause_of(fr, pick))
        elif name in ("instrument", "texture", "style") and fr.noun and rng.random() < 0.85:
            nouns[name] = pick(fr.noun)
        elif "{sents}" in frame and rng.random() < 0.5:
            clauses.append(_clause_of(fr, pick))
        elif ("{tags}" in frame and rng.random() < 0.5) or not (fr.adj or fr.post):
            tags.append(pick(fr.tag or fr.adj or fr.post or fr.noun))
        elif "{clauses}" in frame and rng.random() < 0.4:
            clauses.append(_clause_of(fr, pick))
        elif fr.adj and (not fr.post or rng.random() < 0.5):
            pair = _REGISTER_PAIR[family].get(labels.get("register")) if name == "register" else None
            if pair and rng.random() < 0.25:  # doubled: "deep, low"
                a, b = rng.choice(len(pair), 2, replace=False)
                adjs.append(f"{pair[a]}, {pair[b]}" if rng.random() < 0.5 else f"{pair[a]} and {pair[b]}")
            else:
                adjs.append(pick(fr.adj))
        else:
            posts.append(pick(fr.post))
    if scene is not None and style != "np":
        (tags if style == "tags" else clauses).append(
            scene[1] if style == "tags" else pick(_SCENE_CLAUSE[family]).format(_with_article(scene[1]))
        )
        scene = None

    # The head noun: instrument and texture ("piano melody", "arpeggios on organ"), a style noun,
    # a scene, or a generic noun.
    inst, tex, sty = nouns.get("instrument"), nouns.get("texture"), nouns.get("style")
    if sty and (inst or tex):
        head = pick((f"{inst} {sty}", f"{sty} on {inst}", f"{sty} for {inst}")) if inst else sty
        if tex:
            head += pick((" with ", " built on ")) + _with_article(tex)
    elif inst and tex:
        head = pick((f"{inst} {tex}", f"{tex} on {inst}", f"{tex} played on {inst}"))
    elif inst and sty:
        head = pick((f"{inst} {sty}", f"{sty} on {inst}", f"{sty} for {inst}"))
    elif inst and rng.random() < 0.35:
        head = pick(("{} piece", "{} music", "{} track", "{} tune", "piece for {}", "track on {}")).format(inst)
    else:
        head = inst or tex or sty
    if scene is not None:
        if head is None or rng.random() < 0.5:
            if head is not None:
                posts.append(pick(("featuring ", "with ")) + _with_article(head))
            head = scene[1]
        else:
            posts.append(pick(_SCENE_POST[family]).format(_with_article(scene[1])))
    if head is None:
        generic = [h for h in _HEADS[family] if not (h == "instrumental" and _has_voices(labels))]
        head = "music" if family == _T and rng.random() < 0.15 else pick(generic)

    adj_text = (", " if rng.random() < 0.7 else " ").join(adjs)
    np0 = (adj_text + " " if adj_text else "") + head
    if posts:
        if len(posts) > 1 and rng.random() < 0.5:
            np0 += " " + ", ".join(posts[:-1]) + " and " + posts[-1]
        else:
            np0 += " " + (", " if rng.random() < 0.3 else " ").join(posts)
    fills = {
        "np": _with_article(np0, head),
        "np0": np0,
        "tags": ", ".join(tags),
        "clauses": pick(_CLAUSE_JOIN[family]).join(clauses),
        "sents": " ".join(_sentence(c) for c in clauses),
    }
    if style == "np":  # optional parts of a noun-phrase frame that got nothing
        frame = re.sub(
            r"\s*[-:;.]?\s*\{(tags|clauses|sents)\}", lambda m: m.group(0) if fills[m.group(1)] else "", frame
        )
        if not tags and not clauses and rng.random() < 0.5 and frame.endswith("}"):
            frame += "."
        leftovers = [t for t in tags if "{tags}" not in frame] + [
            c for c in clauses if "{" + "sents}" not in frame and "{clauses}" not in frame
        ]
        if leftovers:
            frame += ". " + " ".join(_sentence(x) for x in leftovers)
    text = _fix_articles(re.sub(r"\s+", " ", frame.format(**fills)).strip())
    text = re.sub(r"\.\.+", ".", text)
    text = text[0].upper() + text[1:]
    return Caption(text, tuple(a for a in ATTRIBUTES if a in mentioned), family)


def _clause_of(fr: _Fragment, pick) -> str:
    if fr.clause:
        return pick(fr.clause)
    posts = [p for p in fr.post if p.startswith(("in ", "with ", "at "))]
    if posts:
        post = pick(posts)
        return {"i": "it is ", "w": "it comes ", "a": "it is played "}[post[0]] + post
    if fr.adj:
        return "it sounds " + pick(fr.adj)
    if fr.noun:
        return "it is " + _with_article(pick(fr.noun))
    return "it is " + pick(fr.post or fr.tag)


def _with_article(np_text: str, head: Optional[str] = None) -> str:
    """'a'/'an' + a noun phrase, none for mass nouns ('music for the gym', 'study music') and
    plurals ('arpeggios on piano'); `head`: the phrase's noun (default: all of it)."""
    head = np_text if head is None else head
    if re.search(r"(^|\s)music(?! box)", head) or head.startswith("something") or _is_plural(head):
        return np_text
    return _article(np_text)


def _has_voices(labels: dict) -> bool:
    return "choir" in (labels.get("instrument"), labels.get("accompaniment"))


def _sentence(clause: str) -> str:
    clause = clause.strip()
    return clause[0].upper() + clause[1:] + ("" if clause.endswith(".") else ".")


def caption_for(labels: dict, rng: np.random.Generator, family: str = "train") -> str:
    """The text of `make_caption(labels, rng, family)`."""
    return make_caption(labels, rng, family).text


def caption_variants(labels: dict, rng: np.random.Generator, n: int = NUM_VARIANTS, family: str = "train") -> list:
    """`n` distinct Captions of one piece (fewer only if 8 n draws find no more)."""
    out, seen = [], set()
    for _ in range(8 * n):
        c = make_caption(labels, rng, family)
        if c.text not in seen:
            seen.add(c.text)
            out.append(c)
            if len(out) == n:
                break
    return out


# ---------------------------------------------------------------------------------------------
# Checking: every phrase of every value, and whether a text contradicts labels.


@functools.lru_cache(maxsize=None)
def _value_phrases(attr: str, value, family: str) -> frozenset:
    return frozenset(_value_phrases_uncached(attr, value, family))


def _value_phrases_uncached(attr: str, value, family: str) -> set:
    """Every phrase that states `attr` = `value` in `family` (no bpm or key numbers/names)."""
    table = {
        "tempo_class": _TEMPO,
        "register": _REGISTER,
        "drums": _DRUMS,
        "loudness": _LOUDNESS,
        "texture": _TEXTURE,
        "metre": _METRE,
        "style": _STYLE,
        "dynamics": _DYNAMICS,
        "timbre_source": _TIMBRE,
        "mode": _MODE,
    }
    out: set = set()
    if attr == "instrument":
        return set(_INSTRUMENT[family].get(value, ()))
    if attr == "accompaniment":
        if value is None:
            return {p for v in _UNACCOMPANIED[family].values() for p in v}
        words = _INSTRUMENT[family].get(value, ())
        return {p.format(w=w) for v in _ACCOMPANIED[family].values() for p in v for w in words}
    if attr == "mood":
        return set(_MOOD[family].get(value, ()))
    if attr == "register":
        out |= set(_REGISTER_PAIR[family].get(value, ()))
    for kinds in (table[attr][family].get(value, {}),):
        for phrases in kinds.values():
            out |= {p for p in phrases if "{" not in p}
    return out


def lexicon(family: str) -> dict:
    """{(attribute, value): phrases} of `family` (mood values are (tempo_class, mode) pairs; scene
    phrases under ('scene', index))."""
    family = _family_check(family)
    out = {}
    for attr, values in _CHECKED_VALUES.items():
        for v in values:
            out[(attr, v)] = _value_phrases(attr, v, family)
    for i, (_, _, phrases) in enumerate(_SCENES[family]):
        out[("scene", i)] = set(phrases)
    return out


def frame_markers(family: str) -> set:
    """The literal words of a family's frames and connectives (what held-out frames add)."""
    family = _family_check(family)
    out = set()
    for frame in _FRAMES[family]:
        for part in re.split(r"\{\w+\}", frame):
            part = part.strip(" .,;:-()")
            if len(part) > 3:
                out.add(part)
    for join in _CLAUSE_JOIN[family]:
        if join.strip(" ,;"):
            out.add(join.strip())
    return out


_CHECKED_VALUES = {
    "instrument": ("piano", "organ", "plucked", "square_lead", "strings", "bell", "bass", "brass", "choir"),
    "tempo_class": ("slow", "medium", "fast"),
    "mode": ("major", "minor"),
    "mood": tuple(_MOOD[_T]),
    "register": ("low", "mid", "high"),
    "drums": (True, False),
    "loudness": ("soft", "medium", "loud"),
    "texture": ("melody", "melody_chords", "arpeggio"),
    "metre": ("3/4", "4/4"),
    "style": ("rock", "waltz", "ballad", "march"),
    "accompaniment": (None, "piano", "organ", "plucked", "square_lead", "strings", "bell", "bass", "brass", "choir"),
    "dynamics": ("steady", "crescendo", "diminuendo"),
    "timbre_source": ("additive", "sampled"),
}


@functools.lru_cache(maxsize=None)
def _pattern(phrase: str) -> re.Pattern:
    return re.compile(r"(?<![\w-])" + re.escape(phrase.lower()) + r"(?![\w-])")


def _spans(text: str, phrase: str) -> list:
    """Where `phrase` occurs in `text` as whole words (case-insensitive; a hyphen joins words)."""
    low = text.lower()
    if phrase.lower() not in low:
        return []
    return [(m.start(), m.end()) for m in _pattern(phrase).finditer(low)]


def _label_value(labels: dict, attr: str):
    if attr == "mood":
        return (labels.get("tempo_class"), labels.get("mode"))
    return labels.get(attr, "<absent>")


def contradictions(text: str, labels: dict, families: Iterable[str] = FAMILIES) -> list:
    """What in `text` states a value that `labels` do not have: a list of (attribute, phrase).

    A phrase of a value other than the label's counts unless it lies inside a phrase of a label's
    own value (of any attribute: "drums" inside "no drums", "strings" inside "backed by strings").
    An attribute absent from the labels may not be stated at all. Keys ("C# minor") and BPM
    numbers are compared with the labels directly; scenes must fit the labels."""
    families = list(families)
    true_spans: list = []
    for fam in families:
        for attr in _CHECKED_VALUES:
            value = _label_value(labels, attr)
            for p in _value_phrases(attr, value, fam) if value != "<absent>" else ():
                true_spans += _spans(text, p)
        for conds, _, phrases in _SCENES[fam]:
            if all(k in labels and labels[k] in allowed for k, allowed in conds.items()):
                for p in phrases:
                    true_spans += _spans(text, p)

    def covered(span):
        return any(s <= span[0] and span[1] <= e and (s, e) != span for s, e in true_spans) or span in true_spans

    out = []
    for fam in families:
        for attr, values in _CHECKED_VALUES.items():
            value = _label_value(labels, attr)
            for v in values:
                if v == value:
                    continue
                for p in _value_phrases(attr, v, fam):
                    if any(not covered(s) for s in _spans(text, p)):
                        out.append((attr, p))
        for conds, _, phrases in _SCENES[fam]:
            if not all(k in labels and labels[k] in allowed for k, allowed in conds.items()):
                out += [("scene", p) for p in phrases if any(not covered(s) for s in _spans(text, p))]
    for key, mode in re.findall(_KEY_RE, text):
        if key.replace("-sharp", "#") != labels.get("key") or mode != labels.get("mode"):
            out.append(("key", f"{key} {mode}"))
    for number in re.findall(r"(?i)(\d+)\s*(?:BPM|beats)|metronome (?:at |reads )?(\d+)", text):
        n = next(x for x in number if x)
        if str(labels.get("bpm")) != n:
            out.append(("bpm", n))
    if "instrumental" in text.lower() and _has_voices(labels):
        out.append(("instrument", "instrumental"))
    return out


_KEY_RE = r"\b([A-G](?:#|-sharp)?) (major|minor)\b(?!-key| key| tonality)"


def mentioned_by_phrases(text: str, labels: dict, family: Optional[str] = None) -> set:
    """The label keys that `text` states by the phrases of the labels' own values, their scenes,
    key names and BPM numbers (an independent reading of `Caption.mentioned`)."""
    out = set()
    for fam in [family] if family else FAMILIES:
        for attr in _CHECKED_VALUES:
            value = _label_value(labels, attr)
            if value == "<absent>":
                continue
            if any(_spans(text, p) for p in _value_phrases(attr, value, fam)):
                out |= {"tempo_class", "mode"} if attr == "mood" else {attr}
                out |= {"drums"} if attr == "accompaniment" and value is None else set()
        for conds, mentions, phrases in _SCENES[fam]:
            if all(k in labels and labels[k] in allowed for k, allowed in conds.items()):
                if any(_spans(text, p) for p in phrases):
                    out |= set(mentions)
    if re.search(_KEY_RE, text):
        out |= {"key", "mode"}
    if re.search(r"(?i)\d+\s*(?:BPM|beats)|metronome (?:at |reads )?\d+", text):
        out |= {"bpm", "tempo_class"}
    return out
