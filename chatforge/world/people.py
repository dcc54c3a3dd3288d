"""A person of the synthetic world: the facts the corpus states about them, and whether it states them."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Person:
    id: str
    name: str           # "First Last", unique in the world
    first: str
    last: str
    birth_date: str     # canonical "March 4, 1962"
    city: str
    university: str
    field: str
    employer: str
    known: bool         # True -> bios are in the pretraining corpus
    bios: list[str]

    def attribute(self, name: str) -> str:
        return getattr(self, name)
