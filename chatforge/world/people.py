"""A person of the synthetic world: the facts the corpus states about them, and whether it states them."""
from __future__ import annotations

from dataclasses import dataclass


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
