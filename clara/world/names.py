"""Invented, pronounceable names built from syllables.

Names are random syllable strings, so no pretrained backbone can know them: answers must
come from the documents. ``variant`` makes near-identical names ("Mara Kellen" vs
"Mara Kellan") that serve as hard negatives for retrieval.
"""

from __future__ import annotations

import random
import re

ONSETS = (
    "b", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z",
    "br", "dr", "kr", "tr", "st", "th", "sh", "gr", "pl", "vr", "sk", "j", "w",
)  # fmt: skip
VOWELS = ("a", "e", "i", "o", "u", "a", "e", "o", "ai", "ei", "y")
CODAS = ("", "", "", "n", "r", "l", "s", "th", "k", "m", "x", "nd", "rn", "lt", "sk", "v")
FIRST_ENDINGS = ("", "", "a", "o", "an", "is", "el", "ia", "en", "ar")
SURNAME_ENDINGS = ("en", "an", "ov", "ing", "ard", "ell", "ik", "or", "um", "ast", "in", "er")
CITY_ENDINGS = ("in", "ora", "ath", "heim", "mor", "ssa", "vik", "ford", "grad", "esh", "ona", "dal")
COUNTRY_ENDINGS = ("ia", "onia", "istan", "and", "avia", "ora", "esia")
ORG_SUFFIXES = (
    "Works", "Group", "Holdings", "Labs", "Company", "Partners", "Industries", "Collective",
    "Foundry", "Systems", "Trading", "Guild",
)  # fmt: skip

_VOWEL_RE = re.compile(r"[aeiouy]")
# A name token must never be a word the templates or questions use, or lexical overlap
# between a name and a relation word would leak information.
_MIN_TOKEN = 3


def _syllable(rng: random.Random, coda: bool = True) -> str:
    return rng.choice(ONSETS) + rng.choice(VOWELS) + (rng.choice(CODAS) if coda else "")


class NameGenerator:
    """Draws names never used before by this generator (or listed in ``reserved``).

    ``used`` may be shared between generators so that an endless stream never repeats.
    """

    def __init__(self, rng: random.Random, used: set[str] | None = None, reserved: set[str] | None = None):
        self.rng = rng
        self.used = used if used is not None else set()
        self.reserved = {w.lower() for w in (reserved or ())}

    def _ok(self, name: str) -> bool:
        if name in self.used:
            return False
        tokens = name.lower().split()
        if tokens[-1].capitalize() in ORG_SUFFIXES:  # the suffix is a common word on purpose
            tokens = tokens[:-1]
        return all(len(t) >= _MIN_TOKEN and t not in self.reserved for t in tokens)

    def _claim(self, make) -> str:
        for _ in range(10_000):
            name = make()
            if self._ok(name):
                self.used.add(name)
                return name
        raise RuntimeError("name space exhausted; use fewer entities")  # 10k misses: never in practice

    def _word(self, syllables: int, ending: tuple[str, ...]) -> str:
        parts = [_syllable(self.rng, coda=i == syllables - 1) for i in range(syllables)]
        return ("".join(parts) + self.rng.choice(ending)).capitalize()

    def first_name(self) -> str:
        return self._word(self.rng.choice((1, 2)), FIRST_ENDINGS)

    def surname(self) -> str:
        return self._word(self.rng.choice((1, 1, 2)), SURNAME_ENDINGS)

    def person(self, first: str | None = None) -> str:
        return self._claim(lambda: f"{first or self.first_name()} {self.surname()}")

    def city(self) -> str:
        return self._claim(lambda: self._word(self.rng.choice((1, 2)), CITY_ENDINGS))

    def country(self) -> str:
        return self._claim(lambda: self._word(self.rng.choice((1, 2)), COUNTRY_ENDINGS))

    def organisation(self, suffix: str | None = None) -> str:
        return self._claim(lambda: f"{self._word(self.rng.choice((1, 2)), ('', 'a', 'o', 'is'))} "
                           f"{suffix or self.rng.choice(ORG_SUFFIXES)}")

    def variant(self, name: str, word: int = -1) -> str | None:
        """A near-identical unused name: one vowel of one word changed ("Kellen" -> "Kellan").

        ``word`` picks the word to change (the surname by default, 0 for organisations so
        that "Velta Works" becomes "Velto Works"). None when every change is taken.
        """
        tokens = name.split(" ")
        target = tokens[word]
        options = []
        for m in _VOWEL_RE.finditer(target.lower()):
            pos = m.start()
            for v in "aeiou":
                if v != target[pos].lower():
                    new = target[:pos] + (v.upper() if pos == 0 else v) + target[pos + 1 :]
                    options.append(" ".join(tokens[:word % len(tokens)] + [new] + tokens[word % len(tokens) + 1 :]))
        self.rng.shuffle(options)
        for cand in options:
            if self._ok(cand):
                self.used.add(cand)
                return cand
        return None
