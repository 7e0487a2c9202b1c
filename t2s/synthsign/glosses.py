"""The synthsign word tables: which glosses a caption signs, and what each gloss looks like in signing space.

A *gloss* is one sign: a path (4 control points) around an anchor in signing space, which hands move, and a hand
shape per hand. `VOCABULARY` maps each vocabulary word to its gloss; an unknown word maps deterministically (by a hash
of the word, `gloss_for`) to a gloss-like fallback, so any caption signs something.

Words are read into glosses by `gloss_sequence`: a vocabulary word is its own gloss; a synonym or phrase of `SYNONYMS`
stands for one gloss or a short gloss sequence ("hi" -> HELLO, "thanks" -> THANK YOU, "a lot" -> VERY MUCH); a filler
word of `FILLER_WORDS` ("um", "just", "to", ...) signs nothing. A clip is determined by its gloss sequence, not by its
surface words: "thanks a lot" renders exactly as "thank you very much". No synonym or filler is a vocabulary word, and
every phrase holds a word outside the vocabulary, so a caption of vocabulary words renders as it did before the table.
`paraphrase` rewords a caption with the table, keeping its gloss sequence; `random_caption` draws a sentence of
vocabulary glosses.

Public: `Gloss`, `ANCHORS`, `PATHS`, `HANDEDNESS`, `SHAPES`, `VOCABULARY`, `SYNONYMS`, `FILLER_WORDS`, `tokenize`,
`gloss_sequence`, `paraphrase`, `gloss_for`, `random_caption`. Imports nothing from t2s.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import numpy as np

# Signing space: u is horizontal (0 = body midline, +1 ~ a forearm beyond the right shoulder), v vertical
# (-1 = top of the head, 0 = shoulders, +1 = as far below the shoulders as the head top is above them).
# Anchors and paths are written for the image-right hand; the image-left hand uses their mirror image (u -> -u).
ANCHORS: dict[str, tuple[float, float]] = {
    "forehead": (0.30, -0.85),
    "chin": (0.25, -0.45),
    "chest": (0.35, 0.05),
    "side": (0.85, -0.05),
    "waist": (0.50, 0.55),
    "high": (0.75, -0.95),
}
# Each path is 4 control points (du, dv) relative to its anchor, traversed in order.
PATHS: dict[str, np.ndarray] = {
    name: np.asarray(points, dtype=np.float64)
    for name, points in {
        "circle": [(0.25, 0.0), (0.0, -0.25), (-0.25, 0.0), (0.0, 0.25)],
        "wave": [(-0.22, 0.0), (0.22, 0.0), (-0.22, 0.0), (0.22, 0.0)],
        "tap": [(0.0, -0.22), (0.0, 0.12), (0.0, -0.22), (0.0, 0.12)],
        "arc": [(-0.3, 0.15), (-0.1, -0.18), (0.1, -0.18), (0.3, 0.15)],
        "rise": [(0.0, 0.4), (0.05, 0.12), (-0.05, -0.12), (0.0, -0.4)],
        "fall": [(0.0, -0.4), (-0.05, -0.12), (0.05, 0.12), (0.0, 0.4)],
        "out": [(-0.35, 0.0), (-0.12, 0.03), (0.12, 0.03), (0.35, 0.0)],
        "in": [(0.35, 0.0), (0.12, -0.03), (-0.12, -0.03), (-0.35, 0.0)],
        "zigzag": [(-0.25, -0.25), (0.25, -0.08), (-0.25, 0.08), (0.25, 0.25)],
        "shake": [(0.1, 0.05), (-0.1, -0.05), (0.1, 0.05), (-0.1, -0.05)],
        "hold": [(0.0, 0.0), (0.04, 0.02), (0.0, 0.0), (0.04, 0.02)],
        "diagonal": [(-0.28, -0.28), (-0.09, -0.09), (0.09, 0.09), (0.28, 0.28)],
    }.items()
}
# Which hands move: the right hand alone (left rests), the left alone, both mirrored, or both alternating
# (the left hand runs the mirrored path backwards).
HANDEDNESS = ("right", "left", "both", "alt")
# Point-symmetric hand shapes (so a shape's pixel centroid is its centre).
SHAPES = ("circle", "square", "diamond", "wide", "tall", "plus")



@dataclass(frozen=True)
class Gloss:
    """One sign: a path around an anchor, which hands move, and (dominant hand shape, other hand shape)."""

    path: str
    anchor: str
    hands: str
    shapes: tuple[str, str]


def _g(path: str, anchor: str, hands: str, dominant: str, other: str) -> Gloss:
    return Gloss(path, anchor, hands, (dominant, other))


VOCABULARY: dict[str, Gloss] = {
    "hello": _g("wave", "forehead", "right", "square", "circle"),
    "my": _g("tap", "chest", "right", "square", "circle"),
    "name": _g("tap", "chin", "both", "plus", "plus"),
    "is": _g("hold", "chest", "right", "diamond", "circle"),
    "anna": _g("zigzag", "side", "right", "tall", "circle"),
    "where": _g("shake", "chin", "right", "plus", "circle"),
    "the": _g("out", "waist", "right", "circle", "circle"),
    "train": _g("out", "chest", "both", "wide", "wide"),
    "station": _g("fall", "side", "both", "square", "square"),
    "thank": _g("fall", "chin", "right", "wide", "circle"),
    "you": _g("out", "chest", "right", "diamond", "circle"),
    "very": _g("rise", "chest", "both", "diamond", "diamond"),
    "much": _g("arc", "chest", "both", "wide", "wide"),
    "please": _g("circle", "chest", "right", "wide", "circle"),
    "help": _g("rise", "waist", "both", "square", "wide"),
    "i": _g("tap", "chest", "left", "tall", "circle"),
    "want": _g("in", "chest", "both", "circle", "circle"),
    "go": _g("out", "side", "alt", "diamond", "diamond"),
    "home": _g("tap", "chin", "right", "circle", "circle"),
    "today": _g("fall", "chest", "both", "tall", "tall"),
    "tomorrow": _g("arc", "chin", "right", "tall", "circle"),
    "yesterday": _g("arc", "chin", "left", "tall", "circle"),
    "good": _g("fall", "chin", "left", "wide", "circle"),
    "morning": _g("rise", "side", "right", "wide", "square"),
    "night": _g("arc", "high", "both", "square", "square"),
    "eat": _g("tap", "chin", "left", "square", "circle"),
    "drink": _g("rise", "chin", "right", "circle", "circle"),
    "water": _g("tap", "chin", "right", "plus", "circle"),
    "yes": _g("tap", "side", "right", "square", "circle"),
    "no": _g("shake", "side", "right", "diamond", "circle"),
    "sorry": _g("circle", "chest", "left", "square", "circle"),
    "friend": _g("circle", "chest", "both", "plus", "plus"),
    "family": _g("circle", "waist", "both", "wide", "wide"),
    "work": _g("tap", "waist", "alt", "square", "square"),
    "school": _g("tap", "chest", "both", "wide", "wide"),
    "what": _g("shake", "waist", "both", "circle", "circle"),
    "how": _g("in", "waist", "both", "diamond", "square"),
    "when": _g("circle", "side", "right", "plus", "circle"),
    "weather": _g("zigzag", "high", "both", "wide", "wide"),
    "rain": _g("fall", "high", "alt", "plus", "plus"),
    "sun": _g("circle", "high", "right", "circle", "circle"),
    "bus": _g("out", "chest", "alt", "square", "square"),
    "city": _g("tap", "high", "alt", "diamond", "diamond"),
    "love": _g("hold", "chest", "both", "tall", "tall"),
    "learn": _g("in", "forehead", "right", "plus", "wide"),
    "sign": _g("circle", "chest", "alt", "tall", "tall"),
    "language": _g("out", "chest", "both", "plus", "plus"),
    "stop": _g("fall", "chest", "right", "square", "wide"),
    "again": _g("arc", "waist", "right", "diamond", "wide"),
    "understand": _g("wave", "forehead", "left", "diamond", "circle"),
}


# Surface words and phrases -> the gloss (sequence) they sign. Keys are lower-case token sequences joined by one space.
# Paraphrases built from this table test whether a text encoder maps wordings it never saw in training to the signs
# of their meaning. Phrases whose words come in another order than their glosses ("station for trains" = TRAIN
# STATION) are the table's only change of word order: glosses keep their order.
SYNONYMS: dict[str, tuple[str, ...]] = {
    "hi": ("hello",), "hey": ("hello",), "greetings": ("hello",),
    "name's": ("name", "is"), "where's": ("where", "is"), "what's": ("what", "is"),
    "railway": ("train",), "rail": ("train",), "station for trains": ("train", "station"),
    "depot": ("station",), "terminal": ("station",),
    "thanks": ("thank", "you"), "cheers": ("thank", "you"),
    "a lot": ("very", "much"), "so much": ("very", "much"), "really": ("very",), "extremely": ("very",),
    "kindly": ("please",), "assist": ("help",), "aid": ("help",),
    "wish": ("want",), "desire": ("want",), "travel": ("go",), "head": ("go",), "house": ("home",),
    "fine": ("good",), "nice": ("good",), "great": ("good",), "nighttime": ("night",),
    "dine": ("eat",), "sip": ("drink",), "yeah": ("yes",), "yep": ("yes",), "nope": ("no",), "nah": ("no",),
    "apologies": ("sorry",), "pardon": ("sorry",), "pal": ("friend",), "buddy": ("friend",), "mate": ("friend",),
    "relatives": ("family",), "folks": ("family",), "job": ("work",), "labour": ("work",), "class": ("school",),
    "climate": ("weather",), "showers": ("rain",), "sunshine": ("sun",), "coach": ("bus",), "town": ("city",),
    "adore": ("love",), "study": ("learn",), "signing": ("sign",), "tongue": ("language",), "halt": ("stop",),
    "once more": ("again",), "comprehend": ("understand",),
}
# Words that sign nothing.
FILLER_WORDS: tuple[str, ...] = ("a", "an", "um", "uh", "er", "well", "oh", "so", "just", "to", "okay")
_MAX_PHRASE = max(len(phrase.split()) for phrase in SYNONYMS)


def _check_word_table() -> None:
    for phrase, glosses in SYNONYMS.items():
        words = phrase.split()
        assert phrase == " ".join(tokenize(phrase)), f"synonym {phrase!r} is not in tokenized form"
        assert any(w not in VOCABULARY for w in words), f"synonym {phrase!r} holds only vocabulary words"
        assert glosses and all(g in VOCABULARY for g in glosses), f"synonym {phrase!r} -> {glosses}: not vocabulary"
    for word in FILLER_WORDS:
        assert word not in VOCABULARY and word not in SYNONYMS, f"filler word {word!r} is a gloss or a synonym"


def tokenize(caption: str) -> list[str]:
    """Lower-case words (letters, digits, apostrophes) of a caption; punctuation separates words."""
    return re.findall(r"[a-z0-9']+", caption.lower())


def gloss_sequence(caption: str) -> list[str]:
    """The glosses a caption signs, in order: each vocabulary word is its gloss, the longest `SYNONYMS` phrase starting
    at a word gives its glosses, a `FILLER_WORDS` word none, and any other word its own (hash-chosen fallback) gloss,
    named by the word. "Thanks a lot!" -> ["thank", "you", "very", "much"]."""
    words, glosses, i = tokenize(caption), [], 0
    while i < len(words):
        for n in range(min(_MAX_PHRASE, len(words) - i), 0, -1):
            phrase = " ".join(words[i : i + n])
            if phrase in SYNONYMS:
                glosses.extend(SYNONYMS[phrase])
                i += n
                break
        else:
            if words[i] not in FILLER_WORDS:
                glosses.append(words[i])
            i += 1
    return glosses


def paraphrase(caption: str, rng: np.random.Generator, synonym_prob: float = 0.7, filler_prob: float = 0.2,
               max_fillers: int = 2) -> str:
    """Another wording of `caption` with the same gloss sequence (so the same clip): glosses are replaced by `SYNONYMS`
    surfaces (each, where the table has one, with probability `synonym_prob`; a phrase may cover several glosses) and
    filler words are inserted (before each surface with probability `filler_prob`, at most `max_fillers`). The result
    always differs from the
    caption's words (a filler is put first if the draws changed nothing) and `gloss_sequence` of it equals the
    caption's; deterministic given `rng`."""
    glosses = gloss_sequence(caption)
    if not glosses:
        raise ValueError(f"caption {caption!r} signs no gloss: nothing to paraphrase")
    surfaces: dict[tuple[str, ...], list[str]] = {}
    for phrase, signed in sorted(SYNONYMS.items()):
        surfaces.setdefault(signed, []).append(phrase)
    original = tokenize(caption)
    for _ in range(50):
        words, k = [], 0
        while k < len(glosses):
            options = [(p, len(g)) for g, ps in surfaces.items() if tuple(glosses[k : k + len(g)]) == g for p in ps]
            if options and rng.random() < synonym_prob:
                phrase, n = options[int(rng.integers(len(options)))]
            else:
                phrase, n = glosses[k], 1
            if rng.random() < filler_prob and sum(w in FILLER_WORDS for w in words) < max_fillers:
                words.append(FILLER_WORDS[int(rng.integers(len(FILLER_WORDS)))])
            words.extend(phrase.split())
            k += n
        if words != original and gloss_sequence(" ".join(words)) == glosses:
            return " ".join(words)
    for filler in FILLER_WORDS:  # a reworded caption that still signs the same: a filler word in front
        words = [filler] + original
        if gloss_sequence(" ".join(words)) == glosses:
            return " ".join(words)
    raise ValueError(f"no paraphrase of {caption!r} keeps its glosses {glosses}")  # not reached with this table


def _stable_hash(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little")


def gloss_for(word: str) -> Gloss:
    """The vocabulary gloss of a word, or a deterministic hash-chosen fallback gloss for an unknown word."""
    word = word.lower()
    if word in VOCABULARY:
        return VOCABULARY[word]
    h = _stable_hash(word)
    paths, anchors = sorted(PATHS), sorted(ANCHORS)
    path = paths[h % len(paths)]
    h //= len(paths)
    anchor = anchors[h % len(anchors)]
    h //= len(anchors)
    hands = HANDEDNESS[h % len(HANDEDNESS)]
    h //= len(HANDEDNESS)
    dominant = SHAPES[h % len(SHAPES)]
    h //= len(SHAPES)
    other = dominant if hands in ("both", "alt") else SHAPES[h % len(SHAPES)]
    return Gloss(path, anchor, hands, (dominant, other))


_check_word_table()


def random_caption(rng: np.random.Generator, min_words: int = 2, max_words: int = 5) -> str:
    """A random sentence of `min_words`..`max_words` vocabulary glosses (with replacement)."""
    words = sorted(VOCABULARY)
    n = int(rng.integers(min_words, max_words + 1))
    return " ".join(words[int(i)] for i in rng.integers(0, len(words), size=n))
