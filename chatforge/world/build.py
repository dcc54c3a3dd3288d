"""The embedded synthetic world: fictional people, places, problems, and the corpus they make.

Why a synthetic world? A model trained from zero on a laptop cannot learn "the internet", but it
can learn a small, closed world completely, and a closed world lets us *check* everything later:
whether the assistant recalls a fact it saw in pretraining, says "I don't know" about a person it
never saw, gets a word problem right, or counts the r's in a word.

What is in it (all generated from one ``random.Random(seed)`` passed down, so the same seed gives
byte-identical files):

* people with attributes (birth year, birth city, university, field, employer), in four groups
  (``Person.group``) for the knowledge experiments. Allen-Zhu & Li, "Physics of Language Models:
  Part 3.1" (2023), show that *several paraphrased* biographies per person (different templates,
  shuffled sentence order, the full name in every sentence) are what let a model later *extract* a
  fact with a question instead of only reciting the bio it memorised, and that Q&A about half the
  people teaches extraction for the other half. So: ``qa`` (K bios + Q&A pages in pretraining, Q&A
  in SFT), ``heldout`` (K bios, never asked in training: extraction is measured here), ``k1`` (one
  bio, never asked: the control that shows K matters) and ``unknown`` (no facts anywhere; their
  names appear on fact-free directory pages as often as known names appear in bios, so neither the
  tokenizer nor the model can tell known from unknown by the name alone; "I don't know" is taught
  and measured on them).
* encyclopedic pages about the fictional countries, cities, universities, companies and (real)
  fields, which also tie the entities together (the companies of a city, the universities of a
  country).
* arithmetic (2-4 digit operands) and multi-step word problems with worked solutions (steps like
  ``3*12=36`` that a calculator can re-check) and a numeric answer, split train/test (test never in
  the corpus, deduplicated by expression); chains of 2-5 steps on small numbers (``7+5-3+6``) whose
  steps are memorisable facts, 100 held out per length.
* letter counting (the true count uniform over 0-3), spelling, and spelling backwards, split the same way.
* the assistant's identity (name, maker, abilities) used by SFT, overridable with ``--identity``.

The corpus is made of *web pages* (written by chatforge.world_pages), because the speedrun pushes
it through a FineWeb-style pipeline (chatforge.crawl renders it as HTML, chatforge.curate filters
it), whose Gopher/C4/FineWeb rules drop what does not read like a web page: < 50 words, few stop
words, many numbers, and above all repetition. So a biography page profiles 1-5 *different* people
(an alumni page, a staff page, a city's notable people) and each known person appears on
``n_bios_per_person`` pages, each time with another of their paraphrased bios; worked problems and
letter tasks are written up in prose, a few of different kinds per page.

Layout written by ``chatforge world --run NAME``:
``runs/NAME/world/world.json`` (+ ``meta.json``) and ``runs/NAME/corpus/corpus.jsonl`` (+ ``corpus.json``).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chatforge.common import (CfError, add_config_args, atomic_write_text,
                              config_from_args, make_parser, print0, print_config, read_json,
                              run_dir, write_meta)
from chatforge.world.people import Person
from chatforge.world.pages import (ATTRIBUTES, QA_TEMPLATES, Fresh, bio, bio_groups, bio_page, cap,
                                   directory_page, entity_page, qa_page, worksheets)


@dataclass
class WorldConfig:
    seed: int = field(default=1337, metadata={"help": "RNG seed; same seed -> byte-identical world"})
    n_people: int = field(default=1000, metadata={"help": "number of fictional people"})
    known_fraction: float = field(default=0.35, metadata={"help": "fraction of people with n_bios_per_person "
                                                          "biographies in the corpus (the K group)"})
    qa_fraction: float = field(default=0.5, metadata={"help": "fraction of the K group whose Q&A pages go into "
                                                      "pretraining (train-QA); the rest is held out"})
    k1_fraction: float = field(default=0.175, metadata={"help": "fraction of people with ONE biography (the "
                                                        "K = 1 control group, never asked in training)"})
    n_bios_per_person: int = field(default=8, metadata={"help": "paraphrased biographies per K-group person"})
    n_qa_rounds: int = field(default=1, metadata={"help": "Q&A pages per train-QA person in the corpus"})
    name_mentions: int = field(default=0, metadata={"help": "K1/unknown names are topped up to this many corpus "
                                                    "mentions on directory pages (0 = the K group's median)"})
    n_cities: int = field(default=40, metadata={"help": "number of fictional cities"})
    n_countries: int = field(default=8, metadata={"help": "number of fictional countries"})
    n_universities: int = field(default=24, metadata={"help": "number of fictional universities"})
    n_employers: int = field(default=40, metadata={"help": "number of fictional companies"})
    n_filler_per_entity: int = field(default=5, metadata={"help": "encyclopedic paragraphs per place/organisation/field"})
    n_problems: int = field(default=8000, metadata={"help": "arithmetic + word problems (train and test)"})
    n_spelling: int = field(default=4000, metadata={"help": "letter-counting + spelling tasks (train and test)"})
    test_fraction: float = field(default=0.1, metadata={"help": "held-out fraction of problems/letter tasks (never in the corpus)"})
    chain_test_per_length: int = field(default=100, metadata={"help": "held-out chains per length (2-5 steps; at most half of them)"})
    letter_test: int = field(default=400, metadata={"help": "held-out letter-counting tasks (at most half of them)"})
    identity: str = field(default="", metadata={"help": "JSON file overriding the assistant identity (name, maker, ...)"})

    def validate(self) -> None:
        for name in ("n_people", "n_bios_per_person", "n_cities", "n_countries", "n_universities", "n_employers"):
            if getattr(self, name) < 1:
                raise CfError(f"world config: {name} must be >= 1, got {getattr(self, name)}")
        for name in ("n_problems", "n_spelling", "n_filler_per_entity", "chain_test_per_length", "letter_test"):
            if getattr(self, name) < 0:
                raise CfError(f"world config: {name} must be >= 0, got {getattr(self, name)}")
        for name in ("known_fraction", "qa_fraction", "k1_fraction", "test_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise CfError(f"world config: {name} must be in [0, 1], got {getattr(self, name)}")
        if self.known_fraction + self.k1_fraction > 1.0:
            raise CfError(f"world config: known_fraction + k1_fraction must be <= 1, got "
                          f"{self.known_fraction} + {self.k1_fraction}")
        if self.n_qa_rounds < 0:
            raise CfError(f"world config: n_qa_rounds must be >= 0, got {self.n_qa_rounds}")


DEFAULT_IDENTITY: dict[str, Any] = {
    "name": "Forge",
    "maker": "the chatforge project",
    "description": "a small chat assistant trained from scratch by the chatforge project, on a synthetic "
                   "world of fictional people and places plus worked math problems",
    "abilities": ["answer questions about the people, cities, universities and companies of its world",
                  "solve arithmetic and word problems step by step",
                  "count letters and spell words",
                  "use tools: a calculator, a Python sandbox and a search engine over its documents"],
    "limitations": ["it is a small model and makes mistakes",
                    "it knows nothing about the real world beyond its training documents",
                    "it cannot browse the internet"],
}


# ----------------------------------------------------------------------------- vocabulary

_SYL = ["ka", "lo", "mi", "ra", "ve", "no", "ta", "si", "el", "dor", "an", "bri", "ce", "da", "fa",
        "gil", "ha", "is", "jo", "ke", "lu", "ma", "ne", "or", "pa", "ri", "ro", "sa", "te", "ul",
        "va", "wen", "ya", "zo", "bel", "cor", "dun", "fen", "gar", "hol", "mar", "nor", "tes", "vin"]
_FIRST_END = ["", "", "n", "a", "el", "ia", "o", "is", "ra"]
_LAST_END = ["son", "vic", "ard", "ell", "berg", "ton", "ley", "mont", "ski", "ani", "ez", "ova"]
_CITY_END = ["ford", "ton", "haven", "burg", "mouth", "vale", "port", "field", "stad", "bridge"]
_COUNTRY_END = ["ia", "land", "mark", "ora", "istan", "avia"]
_RIVERS_END = ["wash", "mere", "brook", "flow", "run"]
_COMPANY_KIND = [("Labs", "research"), ("Systems", "software"), ("Works", "manufacturing"),
                 ("Foods", "food production"), ("Motors", "car making"), ("Press", "publishing"),
                 ("Bank", "banking"), ("Energy", "energy"), ("Pharma", "medicine"), ("Air", "aviation")]
_UNI_FORMS = ["University of {city}", "{city} Institute of Technology", "{city} Polytechnic",
              "{last} University", "{city} College", "Royal Academy of {city}"]
_FEATURES = ["old stone bridges", "busy harbour", "spring flower market", "tall clock tower",
             "hillside vineyards", "public libraries", "winter festival", "narrow canals",
             "textile mills", "botanical garden", "night markets", "glass workshops", "tram network",
             "river beaches", "sea fog", "cheese caves"]
FIELDS: dict[str, str] = {  # real fields, with a one-line definition for filler text
    "chemistry": "the study of substances, their properties and how they react",
    "physics": "the study of matter, energy, motion and forces",
    "biology": "the study of living things",
    "mathematics": "the study of numbers, shapes, structure and proof",
    "linguistics": "the scientific study of language",
    "history": "the study of the human past",
    "economics": "the study of how people use scarce resources",
    "geology": "the study of rocks and the history of the Earth",
    "astronomy": "the study of stars, planets and the universe",
    "medicine": "the science and practice of healing",
    "architecture": "the art and science of designing buildings",
    "computer science": "the study of computation and information",
    "philosophy": "the study of knowledge, reason and values",
    "music": "the art of organising sound in time",
    "law": "the study of rules made by societies",
    "ecology": "the study of how organisms relate to their environment",
    "statistics": "the science of learning from data",
    "psychology": "the study of mind and behaviour",
    "engineering": "the use of science to design machines and structures",
    "agriculture": "the science of growing crops and raising animals",
}
REAL_WORDS = ["strawberry", "banana", "mississippi", "raspberry", "committee", "bookkeeper",
              "balloon", "coffee", "letter", "parallel", "necessary", "accommodate", "occurrence",
              "tomorrow", "address", "programming", "language", "assistant", "butterfly", "chocolate",
              "elephant", "giraffe", "pineapple", "umbrella", "hippopotamus", "broccoli", "cinnamon",
              "dessert", "embarrass", "happiness", "millennium", "possession", "success", "vacuum",
              "bottleneck", "keyboard", "referee", "tennessee", "peppermint", "grammar", "rhythm",
              "cucumber", "zucchini", "apple", "tomato", "sunflower", "waterfall", "mountain"]


def _made_up(rng: random.Random, n_syl: int, end: list[str]) -> str:
    return cap("".join(rng.choice(_SYL) for _ in range(n_syl)) + rng.choice(end))


def _unique(rng: random.Random, make, used: set[str]) -> str:
    """Draw names from ``make(rng)`` until one is not in ``used`` (then record it)."""
    for _ in range(10000):
        s = make(rng)
        if s not in used:
            used.add(s)
            return s
    raise CfError("world config: ran out of unique names; lower the sizes")


# ----------------------------------------------------------------------------- the world

@dataclass
class World:
    config: WorldConfig
    people: list[Person]
    entities: list[dict]     # {"kind": country|city|university|employer|field, "name", facts..., "docs": [str]}
    problems: list[dict]     # see _make_problems for the format
    letters: list[dict]      # letter-counting and spelling tasks, same keys as problems
    identity: dict

    @property
    def known(self) -> list[Person]:
        return [p for p in self.people if p.known]

    @property
    def unknown(self) -> list[Person]:
        return [p for p in self.people if not p.known]

    def group(self, name: str) -> list[Person]:
        """People of one knowledge group: "qa", "heldout", "k1" or "unknown" (see Person.group)."""
        return [p for p in self.people if p.group == name]

    def corpus_documents(self) -> list[dict]:
        """Pretraining documents {"id", "text", "source"}: web pages (see the module docstring).

        bio: round r of the biography pages holds every known person's ``bios[r]``, 1-5 people a
        page, so each known person is on ``n_bios_per_person`` pages. filler: the entity pages.
        math / letters: worked-example pages of train items. Deterministic order: grouped by
        source, then shuffled with an RNG derived from the seed so that consecutive documents (and
        any tail-split validation set) mix all sources.
        """
        seed = self.config.seed
        by_name = {e["name"]: e for e in self.entities}
        docs = []
        for r in range(self.config.n_bios_per_person):
            rng = random.Random(seed * 7 + 100 + r)
            for j, (kind, key, group) in enumerate(bio_groups(_in_round(self.known, r), r, seed)):
                docs.append({"id": f"bio/{r}/{j:04d}", "text": bio_page(kind, by_name.get(key), group, r, rng),
                             "source": "bio"})
        qa = self.group("qa")
        for r in range(self.config.n_qa_rounds):
            rng = random.Random(seed * 7 + 200 + r)
            order = rng.sample(qa, len(qa))
            docs += [{"id": f"qa/{r}/{j:04d}", "text": qa_page(group, rng), "source": "qa"}
                     for j, group in enumerate(_chunks(order, 3))]
        rng = random.Random(seed * 7 + 300)
        docs += [{"id": f"directory/{j:04d}", "text": directory_page(names, rng), "source": "directory"}
                 for j, names in enumerate(directory_lists(self.people, rng, self.config.name_mentions))]
        docs += [{"id": f"{e['kind']}/{_slug(e['name'])}/{i}", "text": t, "source": "filler"}
                 for e in self.entities for i, t in enumerate(e["docs"])]
        docs += worksheets(self.problems, "math", rng=random.Random(seed * 7 + 1))
        docs += worksheets(self.letters, "letters", rng=random.Random(seed * 7 + 2))
        random.Random(seed * 7 + 3).shuffle(docs)
        return docs

    def search_documents(self) -> list[dict]:
        """The search tool's index: the first bio of *every* person (known or not) + the filler.

        Unknown people are here on purpose: a fact the model never saw can still be looked up.
        """
        docs = [{"id": f"bio/{p.id}", "text": p.bios[0], "source": "bio"} for p in self.people]
        docs += [{"id": f"{e['kind']}/{_slug(e['name'])}", "text": e["docs"][0], "source": "filler"}
                 for e in self.entities if e["docs"]]
        return docs

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict, where: str = "world.json") -> "World":
        try:
            return cls(config=WorldConfig(**d["config"]), people=[Person(**p) for p in d["people"]],
                       entities=d["entities"], problems=d["problems"], letters=d["letters"],
                       identity=d["identity"])
        except (KeyError, TypeError) as e:
            raise CfError(f"{where}: not a chatforge world ({e})") from None


def _in_round(known: list[Person], r: int) -> list[Person]:
    """The people on round ``r``'s biography pages: those with more than r bios (K1 people: round 0)."""
    return [p for p in known if len(p.bios) > r]


def name_mentions(p: Person) -> int:
    """How often the person's full name appears in their biographies (the corpus's bio pages)."""
    return sum(b.count(p.name) for b in p.bios) if p.known else 0


def directory_lists(people: list[Person], rng: random.Random, target: int = 0,
                    per_page: int = 20) -> list[list[str]]:
    """Name lists for the fact-free directory pages: K1 and unknown people are topped up to ``target``
    mentions in the corpus (0: the median number of times a K-group person's name appears), one
    mention per page, so that every group's names are frequent enough for a BPE tokenizer to split
    them alike (tests/test_knowledge.py measures it)."""
    k_counts = sorted(name_mentions(p) for p in people if p.group in ("qa", "heldout"))
    if not k_counts:
        return []
    target = target or k_counts[len(k_counts) // 2]
    need = {p.name: target - name_mentions(p) for p in people if p.group in ("k1", "unknown")}
    lists = []
    while any(k > 0 for k in need.values()):  # a page: the names with the most mentions still to go
        names = [n for n, k in need.items() if k > 0]
        rng.shuffle(names)
        names = sorted(names, key=lambda n: -need[n])[:per_page]
        if len(names) < 5 and lists:  # a last few mentions are not worth a page of their own
            break
        for n in names:
            need[n] -= 1
        lists.append(names)
    return lists


def _chunks(xs: list, size: int) -> list[list]:
    """``xs`` in pieces of ``size``; a last piece under half that joins the one before (no tiny pages)."""
    out = [xs[i:i + size] for i in range(0, len(xs), size)]
    if len(out) > 1 and len(out[-1]) < size // 2:
        out[-2] += out.pop()
    return out


def _slug(s: str) -> str:
    return "-".join(s.lower().split())


def build_world(cfg: WorldConfig) -> World:
    """Generate the whole world from ``cfg.seed``. Pure: same config -> equal World."""
    cfg.validate()
    rng = random.Random(cfg.seed)
    identity = load_identity(cfg.identity)
    used: set[str] = set()
    countries = [_unique(rng, lambda r: _made_up(r, 2, _COUNTRY_END), used) for _ in range(cfg.n_countries)]
    cities = [{"kind": "city", "name": _unique(rng, lambda r: _made_up(r, 2, _CITY_END), used),
               "country": rng.choice(countries), "founded": rng.randint(800, 1900),
               "population": rng.randint(20, 3000) * 1000,
               "river": _made_up(rng, 1, _RIVERS_END),
               "features": rng.sample(_FEATURES, 2)} for _ in range(cfg.n_cities)]
    fields = list(FIELDS)
    unis = []
    for _ in range(cfg.n_universities):
        for _ in range(10000):
            city, form = rng.choice(cities)["name"], rng.choice(_UNI_FORMS)
            name = form.format(city=city, last=_made_up(rng, 2, _LAST_END))
            if name not in used:
                used.add(name)
                break
        else:
            raise CfError("world config: ran out of unique university names; lower n_universities")
        unis.append({"kind": "university", "name": name, "city": city, "founded": rng.randint(1200, 1990),
                     "strength": rng.choice(fields), "students": rng.randint(2, 60) * 1000})
    employers = []
    for _ in range(cfg.n_employers):
        suffix, industry = rng.choice(_COMPANY_KIND)
        name = _unique(rng, lambda r: f"{_made_up(r, 2, [''])} {suffix}", used)
        employers.append({"kind": "employer", "name": name, "industry": industry,
                          "city": rng.choice(cities)["name"], "founded": rng.randint(1850, 2015),
                          "employees": rng.randint(1, 400) * 50})
    people = _make_people(cfg, rng, used, cities, unis, fields, employers)
    entities = ([{"kind": "country", "name": c} for c in countries] + cities + unis + employers
                + [{"kind": "field", "name": f, "definition": d} for f, d in FIELDS.items()])
    for e in entities:
        e["docs"] = [entity_page(e, entities, rng) for _ in range(cfg.n_filler_per_entity)]
    firsts = [p.first for p in people]
    problems = _make_problems(cfg.n_problems, cfg.test_fraction, firsts, rng, cfg.chain_test_per_length)
    letters = _make_letter_tasks(cfg.n_spelling, cfg.test_fraction, rng, cfg.letter_test)
    return World(config=cfg, people=people, entities=entities, problems=problems, letters=letters,
                 identity=identity)


def _make_people(cfg: WorldConfig, rng: random.Random, used: set[str], cities: list[dict], unis: list[dict],
                 fields: list[str], employers: list[dict]) -> list[Person]:
    """The people and their knowledge groups (Person.group), each with its biographies.

    Groups are random (not "the first ones"): ``qa`` and ``heldout`` (the K group, K =
    n_bios_per_person bios each), ``k1`` (one bio) and ``unknown`` (no bio in the corpus; one
    search-only bio for the search tool).
    """
    people = []
    for i in range(cfg.n_people):
        first = _made_up(rng, rng.choice([1, 2]), _FIRST_END)
        full = _unique(rng, lambda r: f"{first} {_made_up(r, rng.choice([1, 2]), _LAST_END)}", used)
        people.append(Person(id=f"p{i:05d}", name=full, first=first, last=full.split(" ", 1)[1],
                             birth_year=str(rng.randint(1900, 2004)), city=rng.choice(cities)["name"],
                             university=rng.choice(unis)["name"], field=rng.choice(fields),
                             employer=rng.choice(employers)["name"], known=False, bios=[]))
    n_k = round(cfg.known_fraction * cfg.n_people)
    n_qa, n_k1 = round(cfg.qa_fraction * n_k), round(cfg.k1_fraction * cfg.n_people)
    order = list(range(cfg.n_people))
    rng.shuffle(order)
    for p, j in zip(people, order):
        p.group = "qa" if j < n_qa else "heldout" if j < n_k else "k1" if j < n_k + n_k1 else "unknown"
        p.known = p.group != "unknown"
    # bios[r] is written for the r-th page that profiles the person, next to the other people of that
    # page, so that no phrasing repeats on a page (round 0 holds the K1 people too)
    known = [p for p in people if p.known]
    for r in range(cfg.n_bios_per_person):
        for _, _, group in bio_groups([p for p in known if r == 0 or p.group != "k1"], r, cfg.seed):
            pick = Fresh(rng)
            for p in group:
                p.bios.append(bio(p, rng, pick))
    for p in people:
        if not p.known:
            p.bios = [bio(p, rng, Fresh(rng))]
    return people


def load_identity(path: str) -> dict:
    """The default identity, with the keys of the JSON file ``path`` (if given) overriding it."""
    identity = json.loads(json.dumps(DEFAULT_IDENTITY))
    if not path:
        return identity
    d = read_json(path, "identity file")
    if not isinstance(d, dict):
        raise CfError(f"{path}: identity must be a JSON object with keys {sorted(DEFAULT_IDENTITY)}")
    for k, v in d.items():
        if k not in DEFAULT_IDENTITY:
            raise CfError(f"{path}: unknown identity key '{k}'; expected some of {sorted(DEFAULT_IDENTITY)}")
        if not isinstance(v, type(DEFAULT_IDENTITY[k])):
            raise CfError(f"{path}: identity.{k} must be a {type(DEFAULT_IDENTITY[k]).__name__}")
        identity[k] = v
    return identity


_load_identity = load_identity  # the old private name, still imported by sft.py


# ----------------------------------------------------------------------------- question generators

def qa_items(world: World, people: list[Person], rng: random.Random,
             attributes: tuple[str, ...] = ATTRIBUTES) -> list[dict]:
    """One question per (person, attribute) with a random paraphrased template.

    Returns dicts {"question", "answer", "person" (id), "name", "attribute", "known"}; use
    ``world.known`` / ``world.unknown`` for ``people``.
    """
    del world  # part of the signature so callers need not know what the generator consults
    out = []
    for p in people:
        for a in attributes:
            out.append({"question": rng.choice(QA_TEMPLATES[a]).format(name=p.name), "answer": p.attribute(a),
                        "person": p.id, "name": p.name, "attribute": a, "known": p.known, "group": p.group})
    return out


# ----------------------------------------------------------------------------- problems
# A problem dict: {"id", "kind", "template" (a STORIES name or "arithmetic<i>"), "question",
#                  "steps": ["3*12=36", "36-7=29"], "solution": "3*12=36. 36-7=29.",
#                  "expression": "3*12-7", "answer": 29 (int), "split": "train"|"test"}
# Every step is "<arithmetic>=<value>" and re-checks with tools.calculate; expression == answer.

STORIES = ["pencils", "marbles", "notebooks", "driving", "savings", "stickers", "ages", "reading"]


def _word_problem(rng: random.Random, names: list[str], kind: int) -> tuple[str, list[tuple[str, int]], str]:
    """Story template ``STORIES[kind]`` -> (question, [(step expression, value)], full expression)."""
    n = rng.choice(names)
    r = rng.randint
    if kind == 0:
        a, b = r(2, 12), r(3, 24)
        g = r(1, a * b - 1)
        q = f"{n} buys {a} boxes of {b} pencils and gives away {g}. How many pencils are left?"
        return q, [(f"{a}*{b}", a * b), (f"{a * b}-{g}", a * b - g)], f"{a}*{b}-{g}"
    if kind == 1:
        c, per = r(2, 9), r(2, 15)
        a = r(1, c * per - 1)
        b = c * per - a
        q = f"{n} has {a} marbles and finds {b} more, then shares them equally among {c} friends. How many marbles does each friend get?"
        return q, [(f"{a}+{b}", a + b), (f"{a + b}/{c}", per)], f"({a}+{b})/{c}"
    if kind == 2:
        p, k = r(2, 20), r(2, 9)
        bill = ((p * k) // 10 + 1 + r(0, 5)) * 10
        q = f"A notebook costs {p} dollars. {n} buys {k} notebooks and pays with {bill} dollars. How much change does {n} get?"
        return q, [(f"{p}*{k}", p * k), (f"{bill}-{p * k}", bill - p * k)], f"{bill}-{p}*{k}"
    if kind == 3:
        s, h, m = r(20, 90), r(2, 8), r(5, 60)
        q = f"{n} drives at {s} km per hour for {h} hours, then {m} more km. How many km does {n} drive in total?"
        return q, [(f"{s}*{h}", s * h), (f"{s * h}+{m}", s * h + m)], f"{s}*{h}+{m}"
    if kind == 4:
        w, k = r(3, 40), r(2, 20)
        x = r(1, w * k)
        q = f"{n} saves {w} dollars every week for {k} weeks and then spends {x} dollars. How many dollars are left?"
        return q, [(f"{w}*{k}", w * k), (f"{w * k}-{x}", w * k - x)], f"{w}*{k}-{x}"
    if kind == 5:
        a, b, c, d = r(2, 9), r(2, 12), r(2, 9), r(2, 12)
        q = f"{n} buys {a} packs of {b} stickers and {c} packs of {d} stickers. How many stickers is that?"
        return q, [(f"{a}*{b}", a * b), (f"{c}*{d}", c * d), (f"{a * b}+{c * d}", a * b + c * d)], f"{a}*{b}+{c}*{d}"
    if kind == 6:
        a, half = r(5, 40), r(5, 40)
        b = 2 * half - a
        if b <= 0:
            b, half = b + 2 * a, half + a
        q = f"{n} is {a} years old. {n}'s aunt is {b} years older than {n}. {n}'s cousin is half as old as the aunt. How old is the cousin?"
        return q, [(f"{a}+{b}", a + b), (f"{a + b}/2", half)], f"({a}+{b})/2"
    pages_per, days = r(5, 30), r(2, 10)
    total = pages_per * days + r(1, 200)
    q = f"A book has {total} pages. {n} reads {pages_per} pages a day for {days} days. How many pages are still unread?"
    return q, [(f"{pages_per}*{days}", pages_per * days), (f"{total}-{pages_per * days}", total - pages_per * days)], \
        f"{total}-{pages_per}*{days}"


_ARITH_QUESTIONS = ["What is {e}?", "Compute {e}.", "Calculate {e}.", "What does {e} equal?"]


def _operand(rng: random.Random) -> int:
    """A 2-4 digit number, the digit count uniform: too many products to memorise, so only a tool
    (or a long written algorithm) gets them right."""
    d = rng.randint(2, 4)
    return rng.randint(10 ** (d - 1), 10 ** d - 1)


def _arith_problem(rng: random.Random) -> tuple[str, list[tuple[str, int]], str]:
    """(a op b) op c on 2-4 digit numbers, with exact integer steps."""
    a, b = _operand(rng), _operand(rng)
    op1, op2 = rng.choice("+-*"), rng.choice("+-*/")
    v1 = {"+": a + b, "-": a - b, "*": a * b}[op1]
    c = _operand(rng) if op2 in "+-" else rng.randint(2, 99)
    if op2 == "/":  # make the division exact by choosing a divisor of v1
        divs = [d for d in range(2, 13) if v1 != 0 and v1 % d == 0]
        if not divs:
            op2 = "+"
        else:
            c = rng.choice(divs)
    v2 = {"+": v1 + c, "-": v1 - c, "*": v1 * c, "/": v1 // c if op2 == "/" else 0}[op2]
    expr = f"({a}{op1}{b}){op2}{c}"
    q = rng.choice(_ARITH_QUESTIONS).format(e=f"({a} {op1} {b}) {op2} {c}")
    return q, [(f"{a}{op1}{b}", v1), (f"{v1}{op2}{c}", v2)], expr


_CHAIN_QUESTIONS = ["What is {e}?", "Work out {e}.", "Find the value of {e}.", "Add and subtract from left to right: {e}."]
CHAIN_STEPS = (2, 3, 4, 5)  # chain lengths (number of + / - operations)


def _chain_problem(rng: random.Random, n_steps: int) -> tuple[str, list[tuple[str, int]], str, int]:
    """a +- b +- ... on small numbers (running total 0..20, steps of 1..6), ``n_steps`` operations.
    Each step is a one-token fact the corpus repeats, but answering at once needs all of them in one
    forward pass: the "models need tokens to think" experiment compares exactly that (answer-first
    vs worked vs calculator) as the number of steps grows."""
    total = rng.randint(1, 9)
    expr, steps = str(total), []
    for _ in range(n_steps):
        b = rng.randint(1, 6)
        op = rng.choice("+-")
        if op == "+" and total + b > 20 or op == "-" and total - b < 0:
            op = "-" if op == "+" else "+"
        v = total + b if op == "+" else total - b
        steps.append((f"{total}{op}{b}", v))
        expr, total = expr + f"{op}{b}", v
    t = rng.randrange(len(_CHAIN_QUESTIONS))
    # written without spaces: one non-alphabetic "word" per question, so worksheet pages keep Gopher's
    # >= 80% alphabetic words (spaced out, 7 symbols per question dropped whole pages)
    return _CHAIN_QUESTIONS[t].format(e=expr), steps, expr, t


def _split(items: list[dict], n_test: int | float, rng: random.Random, key: str = "question") -> list[dict]:
    """Deduplicate by ``item[key]``, shuffle, mark the last ``n_test`` items (a count, or a fraction
    when a float) as the held-out test split. Deduplicating by the *expression* (not the question)
    keeps a test chain from being a training chain in other words."""
    seen, out = set(), []
    for it in items:
        if it[key] not in seen:
            seen.add(it[key])
            out.append(it)
    rng.shuffle(out)
    n_test = round(n_test * len(out)) if isinstance(n_test, float) else min(n_test, len(out) // 2)
    for i, it in enumerate(out):
        it["split"] = "test" if i >= len(out) - n_test else "train"
    return out


def problem_item(item_id: str, kind: str, template: str, question: str, steps: list[tuple[str, int]],
                 expression: str) -> dict:
    """A problem as the world stores it (the fields SFT, RL and the checkers read)."""
    return {"id": item_id, "kind": kind, "template": template, "question": question,
            "steps": [f"{e}={v}" for e, v in steps], "solution": " ".join(f"{e}={v}." for e, v in steps),
            "expression": expression, "answer": steps[-1][1]}


def drill_chains(n: int, seed: int, exclude: set[str]) -> list[dict]:
    """``n`` fresh chains of 2-5 steps for the tool-use drill of midtraining and SFT, none with an
    expression in ``exclude`` (pass every test expression: a drill chain is never a held-out chain in
    other words). Not in the pretraining corpus: the worksheets keep their size."""
    rng, out, seen = random.Random(seed), [], set(exclude)
    while len(out) < n:
        q, steps, expr, t = _chain_problem(rng, rng.choice(CHAIN_STEPS))
        if expr not in seen:
            seen.add(expr)
            out.append(problem_item(f"drill{len(out):05d}", "chain", f"chain{t}", q, steps, expr))
    return out


def _make_problems(n: int, test_fraction: float, names: list[str], rng: random.Random,
                   chain_test_per_length: int) -> list[dict]:
    """Word problems (35%), 2-4 digit arithmetic (25%) and small-number chains of 2-5 steps (40%).
    Chains get ``chain_test_per_length`` test items per length (at most half of that length), the
    rest ``test_fraction``; everything is deduplicated by expression."""
    items = []
    for i in range(n):
        u = rng.random()
        kind = "word" if u < 0.35 else "arithmetic" if u < 0.6 else "chain"
        if kind == "chain":
            q, steps, expr, t = _chain_problem(rng, rng.choice(CHAIN_STEPS))
            template = f"chain{t}"
        elif kind == "word":
            story = rng.randrange(len(STORIES))
            q, steps, expr = _word_problem(rng, names, story)
            template = STORIES[story]
        else:
            q, steps, expr = _arith_problem(rng)
            template = "arithmetic%d" % next(j for j, t in enumerate(_ARITH_QUESTIONS) if q.startswith(t[:6]))
        items.append(problem_item(f"math{i:05d}", kind, template, q, steps, expr))
    out = _split([it for it in items if it["kind"] != "chain"], test_fraction, rng, key="expression")
    for k in CHAIN_STEPS:
        out += _split([it for it in items if it["kind"] == "chain" and len(it["steps"]) == k],
                      chain_test_per_length, rng, key="expression")
    seen: set[str] = set()  # one expression, one item (a chain and a word problem never share one)
    return [it for it in out if not (it["expression"] in seen or seen.add(it["expression"]))]


_COUNT_QUESTIONS = ["How many {l}'s are in the word '{w}'?", "How many times does the letter {l} appear in '{w}'?",
                    "Count the letter {l} in the word '{w}'."]
_SPELL_QUESTIONS = ["Spell the word '{w}' letter by letter.", "How do you spell '{w}'?",
                    "Write out the letters of '{w}'."]
_BACKWARDS_QUESTIONS = ["Spell '{w}' backwards.", "What is '{w}' spelled backwards?",
                        "Write the letters of '{w}' in reverse order."]
LETTER_COUNTS = (0, 1, 2, 3)  # the true count of a letter task is uniform over these: the prior is 25%


def _letter_word(rng: random.Random) -> str:
    return rng.choice(REAL_WORDS) if rng.random() < 0.4 else _made_up(rng, rng.randint(2, 4), [""]).lower()


def _count_task(rng: random.Random, used: set[tuple[str, str]]) -> tuple[str, str, int]:
    """(word, letter, count) with the count drawn uniformly from LETTER_COUNTS first, then a (word,
    letter) not in ``used`` with that count (0: a letter not in the word). Drawing the letter from the
    word, as before, made 63% of answers 1, so "always 1" scored as well as the model; drawing unused
    pairs keeps the counts uniform after deduplication (few words have a letter three times)."""
    count = rng.choice(LETTER_COUNTS)
    for _ in range(10000):
        word = _letter_word(rng)
        letters = sorted({ch for ch in "abcdefghijklmnopqrstuvwxyz" if word.count(ch) == count} - {
            ch for w, ch in used if w == word})
        if letters:
            letter = rng.choice(letters)
            used.add((word, letter))
            return word, letter, count
    raise CfError(f"world: no word with a letter {count} times; check REAL_WORDS")


def _make_letter_tasks(n: int, test_fraction: float, rng: random.Random, letter_test: int) -> list[dict]:
    """Letter counting (60%; ``letter_test`` held out, a quarter per count), spelling (20%) and
    spelling backwards (20%; ``letter_test / 4`` held out)."""
    items, used = [], set()
    for i in range(n):
        u, t = rng.random(), rng.randrange(3)
        if u < 0.6:
            word, letter, count = _count_task(rng, used)
            spelled = "-".join(word)
            pos = [str(j + 1) for j, ch in enumerate(word) if ch == letter]
            # The word is quoted as in a Python string literal, so its tokens in the question and in the
            # interpreter call print('word'.count('l')) are the same (Llama-3's split glues a leading
            # space to a letter run: " word" and "'word" would be different tokens to copy between).
            where = (f"at position{'s' if len(pos) > 1 else ''} {', '.join(pos)}" if pos else "nowhere")
            sol = f"Spell it out: {spelled}. The letter {letter} appears {where}, so the count is {count}."
            items.append({"id": f"let{i:05d}", "kind": "count_letter", "template": f"count{t}",
                          "question": _COUNT_QUESTIONS[t].format(l=letter, w=word), "word": word, "letter": letter,
                          "solution": sol, "answer": count, "key": f"count:{word}:{letter}"})
        else:
            word = _letter_word(rng)
            spelled = "-".join(word)
            if u < 0.8:
                items.append({"id": f"let{i:05d}", "kind": "spell", "template": f"spell{t}",
                              "question": _SPELL_QUESTIONS[t].format(w=word), "word": word,
                              "solution": f"{word} is spelled {spelled}.", "answer": spelled, "key": f"spell:{word}"})
            else:
                back = "-".join(reversed(word))
                items.append({"id": f"let{i:05d}", "kind": "spell_backwards", "template": f"backwards{t}",
                              "question": _BACKWARDS_QUESTIONS[t].format(w=word), "word": word,
                              "solution": f"Forwards: {spelled}. Backwards: {back}.", "answer": back,
                              "key": f"backwards:{word}"})
    per = letter_test // len(LETTER_COUNTS)  # the test split is stratified by count: exactly uniform
    out = _split([it for it in items if it["kind"] == "spell"], test_fraction, rng, key="key")
    out += _split([it for it in items if it["kind"] == "spell_backwards"], per, rng, key="key")
    for c in LETTER_COUNTS:
        out += _split([it for it in items if it["kind"] == "count_letter" and it["answer"] == c], per, rng, key="key")
    return out


# ----------------------------------------------------------------------------- files and CLI

def write_world(world: World, run: str | Path) -> Path:
    """Write ``<run>/world/world.json`` (+ meta.json) and ``<run>/corpus/corpus.jsonl`` (+ corpus.json)."""
    rd = run_dir(run)
    world_json = json.dumps(world.to_json(), ensure_ascii=False, sort_keys=True) + "\n"
    atomic_write_text(rd / "world" / "world.json", world_json)
    docs = world.corpus_documents()
    text = "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs)
    atomic_write_text(rd / "corpus" / "corpus.jsonl", text)
    by_source: dict[str, dict[str, int]] = {}
    for d in docs:
        s = by_source.setdefault(d["source"], {"documents": 0, "chars": 0})
        s["documents"] += 1
        s["chars"] += len(d["text"])
    source = f"chatforge synthetic world, seed {world.config.seed}"
    write_meta(rd / "world" / "meta.json", "world", world.config, source=source,
               n_people=len(world.people), n_known=len(world.known), n_unknown=len(world.unknown),
               n_problems=len(world.problems), n_letters=len(world.letters),
               sha256=hashlib.sha256(world_json.encode()).hexdigest())
    write_meta(rd / "corpus" / "corpus.json", "corpus", world.config, source=source, synthetic=True,
               files=["corpus.jsonl"], n_documents=len(docs), n_chars=sum(len(d["text"]) for d in docs),
               n_bytes=len(text.encode()), by_source=by_source, sha256=hashlib.sha256(text.encode()).hexdigest())
    return rd


def load_world(run: str | Path) -> World:
    """Read ``<run>/world/world.json`` (or a world.json path) back into a World."""
    p = Path(run)
    p = p if p.suffix == ".json" else run_dir(run) / "world" / "world.json"
    return World.from_json(read_json(p, "world file"), where=str(p))


def cli(argv: list[str]) -> None:
    parser = make_parser("chatforge world", "generate the synthetic world (people, problems) and its corpus")
    parser.add_argument("--run", default="speedrun", help="run name (runs/<run>) or path")
    add_config_args(parser, WorldConfig)
    args = parser.parse_args(argv)
    cfg = config_from_args(WorldConfig, args)
    print_config(cfg, "world config")
    t0 = time.perf_counter()
    world = build_world(cfg)
    rd = write_world(world, args.run)
    meta = read_json(rd / "corpus" / "corpus.json")
    print0(f"world: {len(world.people)} people ({len(world.known)} known), {len(world.entities)} entities, "
           f"{len(world.problems)} problems, {len(world.letters)} letter tasks")
    print0(f"corpus: {meta['n_documents']} documents, {meta['n_bytes'] / 1e6:.2f} MB -> {rd / 'corpus'} "
           f"({time.perf_counter() - t0:.1f}s)")
