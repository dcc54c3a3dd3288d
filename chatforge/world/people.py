"""A person of the synthetic world: the facts the corpus states about them, and whether it states them;
and the syllables that made-up names (of people, places, firms, letter-task words) are built from."""
from __future__ import annotations

import random
from dataclasses import dataclass

SYLLABLES = ["ka", "lo", "mi", "ra", "ve", "no", "ta", "si", "el", "dor", "an", "bri", "ce", "da", "fa",
             "gil", "ha", "is", "jo", "ke", "lu", "ma", "ne", "or", "pa", "ri", "ro", "sa", "te", "ul",
             "va", "wen", "ya", "zo", "bel", "cor", "dun", "fen", "gar", "hol", "mar", "nor", "tes", "vin"]


def cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def made_up(rng: random.Random, n_syl: int, end: list[str]) -> str:
    """A capitalised made-up word: ``n_syl`` random syllables and one of the endings ``end``."""
    return cap("".join(rng.choice(SYLLABLES) for _ in range(n_syl)) + rng.choice(end))


@dataclass
class Person:
    id: str
    name: str           # "First Last", unique in the world
    first: str
    last: str
    birth_year: str     # "1962": one or two tokens (a full date is ~7, and each is a separate fact to learn)
    city: str
    university: str
    field: str
    employer: str
    known: bool         # True -> bios are in the pretraining corpus
    bios: list[str]
    # the knowledge experiment's group (see world/build.py): "qa" (K bios + Q&A pages in pretraining),
    # "heldout" (K bios, never asked in training), "k1" (one bio, never asked), "unknown" (no facts
    # anywhere; the name only on fact-free directory pages)
    group: str = ""

    def attribute(self, name: str) -> str:
        return getattr(self, name)
