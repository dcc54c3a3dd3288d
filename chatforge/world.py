"""The embedded synthetic world: fictional people, places, problems, and the corpus they make.

Why a synthetic world? A model trained from zero on a laptop cannot learn "the internet", but it
can learn a small, closed world completely, and a closed world lets us *check* everything later:
whether the assistant recalls a fact it saw in pretraining, says "I don't know" about a person it
never saw, gets a word problem right, or counts the r's in a word.

What is in it (all generated from one ``random.Random(seed)`` passed down, so the same seed gives
byte-identical files):

* people with attributes (birth date, birth city, university, field, employer). Each person is
  described by several *paraphrased* biographies (different templates, shuffled sentence order).
  Allen-Zhu & Li, "Physics of Language Models: Part 3.1" (2023), show that this kind of
  diversity in pretraining (several bios per person, permuted sentences) is what lets a model
  later *extract* a fact with a question instead of only reciting the bio it memorised.
  People are split into *known* (bios go into the pretraining corpus) and *unknown* (never in the
  corpus; only in the search index), so later stages can teach and measure "I don't know".
* encyclopedic pages about the fictional countries, cities, universities, companies and (real)
  fields, which also tie the entities together (the companies of a city, the universities of a
  country).
* arithmetic and multi-step word problems with worked solutions (steps like ``3*12=36`` that a
  calculator can re-check) and a numeric answer, split train/test (test never in the corpus).
* letter counting and spelling tasks with answers, split the same way.
* the assistant's identity (name, maker, abilities) used by SFT, overridable with ``--identity``.

The corpus is made of *web pages*, because the speedrun pushes it through a FineWeb-style
pipeline (chatforge.crawl renders it as HTML, chatforge.curate filters it) and the Gopher/C4/FineWeb
rules drop what does not read like a web page: < 50 words, few stop words, many numbers, and above
all repetition (one n-gram covering > 16-20% of the text, or > 10-15% of it in repeated 5..10-grams).
So a biography page profiles 1-5 *different* people (an alumni page, a staff page, a city's notable
people), each person appearing on ``n_bios_per_person`` pages with a different paraphrase each time;
within a page no phrasing is used twice (``_Fresh``); worked problems and letter tasks are written up
in prose, a few of different kinds per page.

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

from chatforge.common import (CfError, add_config_args, atomic_write_json, atomic_write_text,
                              config_from_args, make_parser, print0, print_config, read_json,
                              run_dir, write_meta)


@dataclass
class WorldConfig:
    seed: int = field(default=1337, metadata={"help": "RNG seed; same seed -> byte-identical world"})
    n_people: int = field(default=1000, metadata={"help": "number of fictional people"})
    known_fraction: float = field(default=0.8, metadata={"help": "fraction of people whose bios go into the corpus"})
    n_bios_per_person: int = field(default=6, metadata={"help": "paraphrased biographies per known person"})
    n_cities: int = field(default=40, metadata={"help": "number of fictional cities"})
    n_countries: int = field(default=8, metadata={"help": "number of fictional countries"})
    n_universities: int = field(default=24, metadata={"help": "number of fictional universities"})
    n_employers: int = field(default=40, metadata={"help": "number of fictional companies"})
    n_filler_per_entity: int = field(default=5, metadata={"help": "encyclopedic paragraphs per place/organisation/field"})
    n_problems: int = field(default=8000, metadata={"help": "arithmetic + word problems (train and test)"})
    n_spelling: int = field(default=4000, metadata={"help": "letter-counting + spelling tasks (train and test)"})
    test_fraction: float = field(default=0.1, metadata={"help": "held-out fraction of problems/letter tasks (never in the corpus)"})
    identity: str = field(default="", metadata={"help": "JSON file overriding the assistant identity (name, maker, ...)"})

    def validate(self) -> None:
        for name in ("n_people", "n_bios_per_person", "n_cities", "n_countries", "n_universities", "n_employers"):
            if getattr(self, name) < 1:
                raise CfError(f"world config: {name} must be >= 1, got {getattr(self, name)}")
        for name in ("n_problems", "n_spelling", "n_filler_per_entity"):
            if getattr(self, name) < 0:
                raise CfError(f"world config: {name} must be >= 0, got {getattr(self, name)}")
        for name in ("known_fraction", "test_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise CfError(f"world config: {name} must be in [0, 1], got {getattr(self, name)}")


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

ATTRIBUTES = ("birth_date", "city", "university", "field", "employer")

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
_MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
           "October", "November", "December"]
REAL_WORDS = ["strawberry", "banana", "mississippi", "raspberry", "committee", "bookkeeper",
              "balloon", "coffee", "letter", "parallel", "necessary", "accommodate", "occurrence",
              "tomorrow", "address", "programming", "language", "assistant", "butterfly", "chocolate",
              "elephant", "giraffe", "pineapple", "umbrella", "hippopotamus", "broccoli", "cinnamon",
              "dessert", "embarrass", "happiness", "millennium", "possession", "success", "vacuum",
              "bottleneck", "keyboard", "referee", "tennessee", "peppermint", "grammar", "rhythm",
              "cucumber", "zucchini", "apple", "tomato", "sunflower", "waterfall", "mountain"]


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _made_up(rng: random.Random, n_syl: int, end: list[str]) -> str:
    return _cap("".join(rng.choice(_SYL) for _ in range(n_syl)) + rng.choice(end))


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
        known = self.known
        docs = []
        for r in range(self.config.n_bios_per_person):
            rng = random.Random(seed * 7 + 100 + r)
            for j, (kind, key, group) in enumerate(_bio_groups(known, r, seed)):
                docs.append({"id": f"bio/{r}/{j:04d}", "text": _bio_page(kind, by_name.get(key), group, r, rng),
                             "source": "bio"})
        docs += [{"id": f"{e['kind']}/{_slug(e['name'])}/{i}", "text": t, "source": "filler"}
                 for e in self.entities for i, t in enumerate(e["docs"])]
        docs += _worksheets(self.problems, "math", rng=random.Random(seed * 7 + 1))
        docs += _worksheets(self.letters, "letters", rng=random.Random(seed * 7 + 2))
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
    people = []
    n_known = round(cfg.known_fraction * cfg.n_people)
    for i in range(cfg.n_people):
        first = _made_up(rng, rng.choice([1, 2]), _FIRST_END)
        full = _unique(rng, lambda r: f"{first} {_made_up(r, rng.choice([1, 2]), _LAST_END)}", used)
        last = full.split(" ", 1)[1]
        month = rng.randrange(12)
        day = rng.randint(1, 28 if month == 1 else 30)
        p = Person(id=f"p{i:05d}", name=full, first=first, last=last,
                   birth_date=f"{_MONTHS[month]} {day}, {rng.randint(1900, 2004)}",
                   city=rng.choice(cities)["name"], university=rng.choice(unis)["name"],
                   field=rng.choice(fields), employer=rng.choice(employers)["name"],
                   known=False, bios=[])
        people.append(p)
    order = list(range(cfg.n_people))
    rng.shuffle(order)  # who is known is random, not "the first ones"
    for p, j in zip(people, order):
        p.known = j < n_known
    # known people: bios[r] is written for the r-th page that profiles them, next to the other
    # people of that page, so that no phrasing repeats on a page; unknown people: search-only bios
    known = [p for p in people if p.known]
    for r in range(cfg.n_bios_per_person):
        for _, _, group in _bio_groups(known, r, cfg.seed):
            pick, firsts = _Fresh(rng), [q.first for q in group]
            for p in group:
                p.bios.append(_bio(p, rng, pick, first_ok=firsts.count(p.first) == 1))
    for p in people:
        if not p.known:
            pick = _Fresh(rng)
            p.bios = [_bio(p, rng, pick) for _ in range(cfg.n_bios_per_person)]
    entities = ([{"kind": "country", "name": c} for c in countries] + cities + unis + employers
                + [{"kind": "field", "name": f, "definition": d} for f, d in FIELDS.items()])
    for e in entities:
        e["docs"] = [_entity_doc(e, entities, rng) for _ in range(cfg.n_filler_per_entity)]
    firsts = [p.first for p in people]
    problems = _make_problems(cfg.n_problems, cfg.test_fraction, firsts, rng)
    letters = _make_letter_tasks(cfg.n_spelling, cfg.test_fraction, rng)
    return World(config=cfg, people=people, entities=entities, problems=problems, letters=letters,
                 identity=identity)


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


# ----------------------------------------------------------------------------- biography pages

class _Fresh:
    """``pick(options)``: a random option not yet used on this page (any, once all are used).

    One page never says the same templated phrase twice: a repeated phrase is exactly what the
    Gopher duplicate n-gram rules (Rae et al. 2021, Table A1) measure against a document.
    """

    def __init__(self, rng: random.Random):
        self.rng, self.used = rng, set()

    def __call__(self, options: list[str]) -> str:
        o = self.rng.choice([x for x in options if x not in self.used] or options)
        self.used.add(o)
        return o


# One phrasing list per attribute (or pair of attributes). {s} is how the person is referred to.
_PHRASES: dict[tuple[str, ...], list[str]] = {
    ("birth_date",): ["{s} was born on {birth_date}.", "{s}'s birthday is {birth_date}.",
                      "{s} came into the world on {birth_date}.", "The birth date of {s} is {birth_date}.",
                      "Records show that {s} was born on {birth_date}.", "{s} was born on {birth_date}, a date the family still celebrates."],
    ("city",): ["{s} was born in {city}.", "{s} is a native of {city}.", "{s}'s hometown is {city}.",
                "{s} was born in the city of {city}.", "{city} is where {s} was born.",
                "{s} grew up in {city}, the city of their birth."],
    ("university",): ["{s} attended {university}.", "{s} graduated from {university}.",
                      "{s} completed a degree at {university}.", "{s} was educated at {university}.",
                      "{s} earned a degree from {university}.", "After school, {s} went on to study at {university}."],
    ("field",): ["{s} studied {field}.", "{s} specialized in {field}.", "{s}'s field is {field}.",
                 "{s} chose to focus on {field}.", "{s} trained in {field}.", "The subject {s} studied was {field}."],
    ("employer",): ["{s} works at {employer}.", "{s} is employed by {employer}.",
                    "{s} has a job at {employer}.", "These days {s} works for {employer}.",
                    "{s} currently works for {employer}.", "{employer} is the company where {s} works."],
    ("birth_date", "city"): ["{s} was born in {city} on {birth_date}.", "{s} was born on {birth_date} in {city}.",
                             "On {birth_date}, {s} was born in {city}.", "{city} is where {s} was born, on {birth_date}."],
    ("field", "university"): ["{s} studied {field} at {university}.", "At {university}, {s} majored in {field}.",
                              "{s} earned a degree in {field} from {university}.", "{s} read {field} at {university}."],
}
_INTROS = ["{name} was born on {birth_date}.", "{name} (born {birth_date} in {city}) is an expert in {field}.",
           "{name} holds a degree in {field} from {university}.", "{name} works at {employer}.",
           "Born in {city}, {name} studied {field}.", "This is the story of {name}.",
           "{name} is a specialist in {field} who works at {employer}.", "{name}, a native of {city}, works for {employer}."]


def _bio(p: Person, rng: random.Random, pick: _Fresh, first_ok: bool = True) -> str:
    """One paraphrased biography: an intro, then every remaining attribute in random order.

    ``first_ok=False`` when someone else on the same page shares the first name: then the person
    is always called by the full name.
    """
    facts = {a: p.attribute(a) for a in ATTRIBUTES}
    intro = pick(_INTROS)
    todo = [a for a in ATTRIBUTES if "{" + a + "}" not in intro]
    sentences = [intro.format(name=p.name, **facts)]
    rng.shuffle(todo)
    while todo:
        a = todo.pop()
        pair = next((k for k in _PHRASES if len(k) == 2 and a in k and all(x in todo or x == a for x in k)), None)
        key = pair if pair is not None and rng.random() < 0.5 else (a,)
        for x in key:
            if x != a:
                todo.remove(x)
        s = rng.choice([p.first, p.name, p.name]) if first_ok else p.name  # full name twice as often
        sentences.append(_cap(pick(_PHRASES[key]).format(s=s, **facts)))
    return " ".join(sentences)


_GROUP_BY = ["university", "employer", "city", "field", ""]  # page kind of bio round r (r mod 5); "" = mixed


def _bio_groups(known: list[Person], r: int, seed: int) -> list[tuple[str, str, list[Person]]]:
    """Round ``r`` of the biography pages: [(kind, key, people)], a partition of ``known``.

    Rounds group people by one attribute (alumni of a university, staff of a company, people born
    in a city, people of a field; 3-5 a page) and put those left over (fewer than 3 sharing a
    value) on mixed pages ("conference speakers"). Pure in (known, r, seed): build_world and
    corpus_documents both call it.
    """
    rng = random.Random(seed * 7 + 10 + r)
    attr = _GROUP_BY[r % len(_GROUP_BY)]
    order = known[:]
    rng.shuffle(order)
    groups: dict[str, list[Person]] = {}
    for p in order:
        groups.setdefault(p.attribute(attr) if attr else "", []).append(p)
    out, rest = [], []
    for key, ps in groups.items():
        if len(ps) < 3 or not attr:
            rest += ps
            continue
        n = -(-len(ps) // 5)  # ceil: pages of 3-5 people
        out += [(attr, key, ps[i::n]) for i in range(n)]
    n = -(-len(rest) // 5)
    kinds = sorted(_MIXED_FRAMES)
    out += [(rng.choice(kinds), "", rest[i::n]) for i in range(n)]
    return out


# page frames: (titles, opening sentences); entity frames are formatted with the entity's fields
_ENTITY_FRAMES: dict[str, tuple[list[str], list[str]]] = {
    "university": (["Alumni notes", "Where are they now: some of our graduates", "Alumni profiles",  # long names:
                    "Former students remember"],  # no name in the title, or it is the page's top 4-gram
                   ["The university has been teaching students in {city} since {founded}.",
                    "Every year the alumni office collects short profiles of former students, and this page gathers a few of them.",
                    "With about {students:,} students on campus today, the university likes to remind newcomers of those who came before them.",
                    "The people below all studied there, but their lives have taken them in very different directions.",
                    "We asked the alumni office which stories to share, and these were the first names on the list."]),
    "employer": (["Meet the team at {name}", "People of {name}", "Staff profiles: {name}", "Who works at {name}"],
                 ["The company has been in the {industry} business since {founded}.",
                  "From its offices in {city}, the company employs around {employees:,} people.",
                  "This page introduces a few of the people who work there.",
                  "Each profile below was first written for the company newsletter and has been lightly edited for the web.",
                  "The team is much larger than this page can show, so we picked a few colleagues at random."]),
    "city": (["Notable people from {name}", "Born in {name}: a few local stories", "{name} and the people it raised",
              "Famous faces of {name}"],
             ["{name} is a city in {country} on the banks of the {river} River.",
              "Besides its {f1}, the city is proud of the people who were born there.",
              "The local history club keeps a list of residents who made a name for themselves, and here are some of them.",
              "Some of them still live in town, while others moved away a long time ago.",
              "Ask anyone in {name} about their famous neighbours and you will hear a few of these names."]),
    "field": (["Profiles in {name}", "People who chose {name}", "Voices from {name}", "Careers in {name}: a few examples"],
              ["{name} is {definition}.",
               "Students often ask what you can do with a degree in {name}, and the best answer is to look at the people who studied it.",
               "The short biographies below show how varied those paths can be.",
               "All of them studied the same subject, yet they went on to work for very different employers.",
               "Some of them knew what they wanted to study from an early age, and others found it by chance."]),
}
_MIXED_FRAMES: dict[str, tuple[list[str], list[str]]] = {
    "award": (["Winners of the community award", "This year's community award winners"],
              ["Each year the community award goes to people who have made a difference to the region.",
               "The committee had a hard time choosing, and these are the names it settled on.",
               "The winners come from many walks of life, which is exactly the point of the award."]),
    "meeting": (["Speakers at this year's regional meeting", "Meet the speakers", "Who is speaking at the spring meeting"],
                ["The regional meeting returns this spring with a full program of talks and workshops.",
                 "Here is a short introduction to some of the speakers, so that you know who to look for between sessions.",
                 "Every speaker was asked to send a few lines about themselves, and we have collected them below."]),
    "podcast": (["Guests on our podcast this season", "Our recent podcast guests"],
                ["Our podcast talks to people with interesting careers about the choices they made along the way.",
                 "These are some of the guests who joined us in recent episodes.",
                 "If you missed an episode, the short profiles below will help you pick one to listen to."]),
    "society": (["New members of the history society", "Welcome to our new members"],
                ["The society welcomed several new members this season, and we asked each of them to introduce themselves.",
                 "Our members come from all over the region and from every kind of background.",
                 "Please say hello to them at the next monthly meeting."]),
}
_TRANSITIONS = ["Another name that came up again and again.", "Next is a profile that readers asked for.",
                "The following story is a little different.", "Here is someone many readers will recognise.",
                "We also spoke with someone from outside the usual circle.", "Our next profile needs little introduction.",
                "This one surprised us.", "A quieter story, but no less interesting."]
_CLOSINGS = ["If you know someone who should be featured here, please get in touch with the editors.",
             "We will add more profiles over the coming months.", "Thank you to everyone who shared their story with us.",
             "Corrections and updates are always welcome.",
             "Some of these profiles first appeared in print and have been updated for this page.",
             "We hope these stories inspire the next generation as much as they inspired us."]


def _bio_page(kind: str, e: dict | None, group: list[Person], r: int, rng: random.Random) -> str:
    """A profile page: title, opening paragraph, one paragraph per person (their ``bios[r]``), closing."""
    pick = _Fresh(rng)
    if e is not None and kind in _ENTITY_FRAMES:
        titles, opening = _ENTITY_FRAMES[kind]
        ctx = dict(e, f1=e.get("features", [""])[0])
    else:
        titles, opening = _MIXED_FRAMES.get(kind, _MIXED_FRAMES["meeting"])
        ctx = {}
    # more frame for a short page (to stay well above 50 words) and on alumni pages, where a long
    # university name ("Rorifield Institute of Technology") in every bio is the page's top 4-gram
    rich = len(group) < 3 or kind == "university"
    small = len(group) < 3
    lines = [_cap(pick(titles).format(**ctx)),
             " ".join(_cap(pick(opening).format(**ctx)) for _ in range(1 + (rich or rng.random() < 0.5) + small))]
    for p in group:
        lines.append((pick(_TRANSITIONS) + " " if rng.random() < (0.5 if rich else 0.2) else "") + p.bios[r])
    if rich or rng.random() < 0.7:
        lines.append(" ".join(pick(_CLOSINGS) for _ in range(1 + small)))
    return "\n\n".join(lines)


# ----------------------------------------------------------------------------- entity pages

def _join(xs: list[str]) -> str:
    return xs[0] if len(xs) == 1 else ", ".join(xs[:-1]) + " and " + xs[-1]


_ENTITY_TITLES = {"country": ["{name}: an overview", "About the country of {name}", "A short guide to {name}", "{name} at a glance"],
                  "city": ["{name}: city guide", "About {name}", "Visiting {name}", "{name}, {country}"],
                  "university": ["About {name}", "{name}: a profile", "Studying at {name}", "{name} at a glance"],
                  "employer": ["About {name}", "{name}: company profile", "Working at {name}", "{name} at a glance"],
                  "field": ["What is {name}?", "An introduction to {name}", "Studying {name}", "{name} explained"]}
_ENTITY_COLOUR = {  # generic sentences that make a page read like a page; "it" is the entity
    "country": ["Visitors come for its food and its long summers.", "Most people live in the towns, but the countryside is where the old traditions survive.",
                "Trains connect the main towns several times a day, and the roads between them are good.",
                "Like its neighbours, the country has a long history of trade by river and by sea.",
                "Local markets sell bread, cheese and fruit from the surrounding farms.",
                "Many families spend the summer months by the water or up in the hills.",
                "Its museums hold old maps, coins and tools from the first settlements.",
                "The winters can be cold, so most festivals are held between spring and autumn."],
    "city": ["The old town is best explored on foot, and most of the sights are close together.",
             "Its cafes fill up quickly on market days, so visitors are advised to come early.",
             "The main square hosts concerts and a weekly market for most of the year.",
             "Many of the houses along the river were built by merchants and have been carefully restored.",
             "Like many cities of its size, it has grown quickly in the last few decades.",
             "A good way to see the whole city is to walk along the river at sunset.",
             "The local football club has a small but very loyal group of supporters.",
             "The city library keeps a large collection of old photographs and letters."],
    "university": ["The campus has a large library, several research centres and a busy student union.",
                   "Students come from all over the country and from many other countries as well.",
                   "The university offers degrees at every level, from first degrees to doctorates.",
                   "Its graduates work in business, government, schools and hospitals.",
                   "Every autumn the new students are welcomed with a week of talks, tours and parties.",
                   "The oldest building on the campus is now used for ceremonies and concerts.",
                   "Teaching is organised in small groups, so students get to know their teachers well.",
                   "The university also runs evening classes that are open to everyone in the area."],
    "employer": ["The company is known for treating its staff well and for training young people.",
                 "It has grown steadily over the years, mostly by opening new offices in nearby towns.",
                 "Many of its workers have been with the company for more than a decade.",
                 "It sponsors a number of local events, including a summer festival and a youth football league.",
                 "The company publishes a yearly report that describes its work and its plans.",
                 "Its managers like to say that the secret of the business is patience.",
                 "New staff spend their first weeks learning from experienced colleagues.",
                 "Like most firms in its industry, it has had good years and difficult ones."],
    "field": ["Many universities teach it, and some are known for it in particular.",
              "Students of the subject learn both its history and its methods.",
              "It is one of the oldest subjects taught at universities, and it keeps changing.",
              "People who study it go on to work in schools, companies and government.",
              "Its ideas are often used in other subjects as well.",
              "Good teachers of the subject say that curiosity matters more than talent.",
              "Beginners usually start with the basic ideas and then choose an area to focus on.",
              "Much of the work in the field is done by teams rather than by people working alone."],
}


def _entity_doc(e: dict, entities: list[dict], rng: random.Random) -> str:
    """An encyclopedic page (title + 2-3 paragraphs) about a place, organisation or field.

    Each call is a different paraphrase (sentence variants, order, colour sentences), so the
    ``n_filler_per_entity`` pages of one entity are not near duplicates of each other.
    """
    k, n = e["kind"], e["name"]
    pick = _Fresh(rng)
    of = {x["name"]: x for x in entities}
    cities = [c for c in entities if c["kind"] == "city"]
    if k in ("university", "employer", "city"):
        city = e if k == "city" else of[e["city"]]
        ctx = dict(e, country=city["country"], river=city["river"], f1=city["features"][0], f2=city["features"][1])
    else:
        ctx = dict(e)
    facts: list[str] = []
    more: list[str] = []
    if k == "country":
        cs = [c for c in cities if c["country"] == n]
        if cs:
            facts.append(pick(["{name} is a country whose towns include {list}.", "The country of {name} is home to {list}.",
                               "Travellers who visit {name} usually pass through {list}."]).format(name=n, list=_join([c["name"] for c in cs])))
            for c in rng.sample(cs, min(3, len(cs))):
                facts.append(pick(["{name} lies on the {river} River and dates back to {founded}.",
                                   "{name} was founded in {founded} and is known for its {f}.",
                                   "About {population:,} people live in {name}.",
                                   "{name} is famous for its {f}."]).format(f=rng.choice(c["features"]), **c))
            here = {c["name"] for c in cs}
            us = [u["name"] for u in entities if u["kind"] == "university" and u["city"] in here]
            es = [x["name"] for x in entities if x["kind"] == "employer" and x["city"] in here]
            if us:
                more.append(pick(["Its universities include {l}.", "Students in the country can choose between {l}."]).format(l=_join(us)))
            if es:
                more.append(pick(["Companies based there include {l}.", "Among its employers are {l}."]).format(l=_join(es)))
        else:
            facts.append(pick([f"{n} is a small country of villages and farms.", f"{n} is a quiet country with no large cities."]))
    elif k == "city":
        facts += [pick(["{name} is a city in {country}.", "{name} is one of the cities of {country}."]),
                  pick(["It was founded in {founded}.", "The city dates back to {founded}."]),
                  pick(["About {population:,} people live there.", "It has a population of roughly {population:,}."]),
                  pick(["It lies on the {river} River.", "The {river} River runs through the city."]),
                  pick(["It is known for its {f1} and its {f2}.", "Travellers remember it for its {f1}."])]
        us = [u["name"] for u in entities if u["kind"] == "university" and u["city"] == n]
        es = [x["name"] for x in entities if x["kind"] == "employer" and x["city"] == n]
        if us:
            more.append(pick(["It is home to {l}.", "Students come to the city to attend {l}."]).format(l=_join(us)))
        if es:
            more.append(pick(["Local employers include {l}.", "{l} {have} offices in the city."]).format(
                l=_join(es), have="has its" if len(es) == 1 else "have their"))
    elif k == "university":
        facts += [pick(["{name} is a university in {city}, a city in {country}.", "{name} is located in {city}, in {country}."]),
                  pick(["It was founded in {founded}.", "It opened its doors in {founded}."]),
                  pick(["It has about {students:,} students.", "Around {students:,} students study there."]),
                  pick(["It is best known for {strength}.", "Its department of {strength} is famous."])]
        more.append(pick(["{s} is {d}.", "For those who do not know the subject, {strength} is {d}."]).format(
            s=_cap(e["strength"]), d=FIELDS[e["strength"]], strength=e["strength"]))
    elif k == "employer":
        facts += [pick(["{name} is a company in the {industry} business.", "{name} works in {industry}."]),
                  pick(["It is based in {city}, {country}.", "Its headquarters are in {city}, in {country}."]),
                  pick(["It was founded in {founded}.", "The company started in {founded}."]),
                  pick(["It employs about {employees:,} people.", "Some {employees:,} people work there."])]
        more.append(pick(["The city of {city} lies on the {river} River.", "Its home town, {city}, is known for its {f1}."]))
    else:
        facts.append(pick(["{cap} is {definition}.", "In short, {name} is {definition}.", "{cap}, {definition}, is taught at universities across the world."]).format(
            cap=_cap(n), **e))
        us = [u["name"] for u in entities if u["kind"] == "university" and u["strength"] == n]
        if us:
            more.append(pick(["Universities known for {name} include {l}.", "{l} {have} a strong reputation in {name}."]).format(
                name=n, l=_join(us), have="has" if len(us) == 1 else "have"))
    facts = [_cap(s.format(**ctx)) for s in facts]
    facts = facts[:1] + rng.sample(facts[1:], len(facts) - 1)
    colour = [pick(_ENTITY_COLOUR[k]) for _ in range(4 - len(more) // 2)]
    paras = [_cap(pick(_ENTITY_TITLES[k]).format(**ctx)), " ".join(facts), " ".join([_cap(s.format(**ctx)) for s in more] + colour)]
    return "\n\n".join(paras)


# ----------------------------------------------------------------------------- question generators

QA_TEMPLATES: dict[str, list[str]] = {
    "birth_date": ["When was {name} born?", "What is {name}'s date of birth?", "On what date was {name} born?",
                   "What is the birthday of {name}?"],
    "city": ["Where was {name} born?", "In which city was {name} born?", "What is {name}'s hometown?"],
    "university": ["Which university did {name} attend?", "Where did {name} study?",
                   "What school did {name} graduate from?"],
    "field": ["What did {name} study?", "What is {name}'s field?", "Which subject did {name} specialize in?"],
    "employer": ["Where does {name} work?", "Who employs {name}?", "Which company does {name} work for?"],
}


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
                        "person": p.id, "name": p.name, "attribute": a, "known": p.known})
    return out


# ----------------------------------------------------------------------------- problems
# A problem dict: {"id", "kind", "question", "steps": ["3*12=36", "36-7=29"], "solution": "3*12=36. 36-7=29.",
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


def _arith_problem(rng: random.Random) -> tuple[str, list[tuple[str, int]], str]:
    """(a op b) op c with exact integer steps."""
    a, b, c = rng.randint(2, 99), rng.randint(2, 99), rng.randint(2, 30)
    op1, op2 = rng.choice("+-*"), rng.choice("+-*/")
    v1 = {"+": a + b, "-": a - b, "*": a * b}[op1]
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


def _split(items: list[dict], test_fraction: float, rng: random.Random) -> list[dict]:
    """Deduplicate by question, shuffle, mark the last ``test_fraction`` as the held-out test split."""
    seen, out = set(), []
    for it in items:
        if it["question"] not in seen:
            seen.add(it["question"])
            out.append(it)
    rng.shuffle(out)
    n_test = round(test_fraction * len(out))
    for i, it in enumerate(out):
        it["split"] = "test" if i >= len(out) - n_test else "train"
    return out


def _make_problems(n: int, test_fraction: float, names: list[str], rng: random.Random) -> list[dict]:
    items = []
    for i in range(n):
        kind = "word" if rng.random() < 0.6 else "arithmetic"
        if kind == "word":
            story = rng.randrange(len(STORIES))
            q, steps, expr = _word_problem(rng, names, story)
            template = STORIES[story]
        else:
            q, steps, expr = _arith_problem(rng)
            template = "arithmetic%d" % next(j for j, t in enumerate(_ARITH_QUESTIONS) if q.startswith(t[:6]))
        items.append({"id": f"math{i:05d}", "kind": kind, "template": template,
                      "question": q, "steps": [f"{e}={v}" for e, v in steps],
                      "solution": " ".join(f"{e}={v}." for e, v in steps), "expression": expr,
                      "answer": steps[-1][1]})
    return _split(items, test_fraction, rng)


def _make_letter_tasks(n: int, test_fraction: float, rng: random.Random) -> list[dict]:
    items = []
    for i in range(n):
        word = rng.choice(REAL_WORDS) if rng.random() < 0.4 else _made_up(rng, rng.randint(2, 4), [""]).lower()
        spelled = "-".join(word)
        if rng.random() < 0.7:
            letter = rng.choice(word) if rng.random() < 0.85 else rng.choice("abcdefghijklmnopqrstuvwxyz")
            pos = [str(j + 1) for j, ch in enumerate(word) if ch == letter]
            t = rng.randrange(3)
            q = ["How many {l}'s are in the word {w}?", "How many times does the letter {l} appear in {w}?",
                 "Count the letter {l} in the word {w}."][t].format(l=letter, w=word)
            where = (f"at position{'s' if len(pos) > 1 else ''} {', '.join(pos)}" if pos else "nowhere")
            sol = f"Spell it out: {spelled}. The letter {letter} appears {where}, so the count is {len(pos)}."
            items.append({"id": f"let{i:05d}", "kind": "count_letter", "template": f"count{t}", "question": q,
                          "word": word, "letter": letter,
                          "solution": sol, "answer": len(pos)})
        else:
            t = rng.randrange(3)
            q = ["Spell the word {w} letter by letter.", "How do you spell {w}?",
                 "Write out the letters of {w}."][t].format(w=word)
            items.append({"id": f"let{i:05d}", "kind": "spell", "template": f"spell{t}", "question": q, "word": word,
                          "solution": f"{word} is spelled {spelled}.", "answer": spelled})
    return _split(items, test_fraction, rng)


# ----------------------------------------------------------------------------- worked-example pages

# step prose per story: one phrasing list per step; {s} is the step as the calculator checks it
_STEP_PROSE: dict[str, list[list[str]]] = {
    "pencils": [["First find how many pencils there are in all, boxes times pencils per box: {s}.",
                 "Each box holds the same number of pencils, so multiply to get the total: {s}.",
                 "Start with the total number of pencils by multiplying the boxes by the pencils in each: {s}."],
                ["Then take away the pencils that were given away: {s}.", "Giving some away means subtracting them from the total: {s}.",
                 "Now subtract the pencils that are gone: {s}."]],
    "marbles": [["First add the marbles found to the marbles already there: {s}.", "Put the two groups of marbles together: {s}.",
                 "The total number of marbles is the sum of both amounts: {s}."],
                ["Sharing equally means dividing the total by the number of friends: {s}.",
                 "Then split them evenly among the friends: {s}.", "Each friend gets the total divided by the number of friends: {s}."]],
    "notebooks": [["The notebooks cost the price of one times the number bought: {s}.",
                   "First work out the cost of all the notebooks together: {s}.",
                   "Multiply the price of a notebook by how many were bought: {s}."],
                  ["The change is what was paid minus the cost: {s}.", "Subtract the cost from the money handed over: {s}.",
                   "Then take the cost away from the amount paid: {s}."]],
    "driving": [["Distance is speed times time, so the first part of the trip covers {s}.",
                 "First find the distance driven at a steady speed by multiplying speed by hours: {s}.",
                 "At a constant speed, the distance is the speed multiplied by the time: {s}."],
                ["Then add the extra distance at the end: {s}.", "Adding the last stretch of the trip gives the total: {s}.",
                 "The extra kilometres are added on top: {s}."]],
    "savings": [["Saving the same amount every week means multiplying by the number of weeks: {s}.",
                 "First find the total saved over all the weeks: {s}.",
                 "The savings add up to the weekly amount times the number of weeks: {s}."],
                ["Then subtract the money that was spent: {s}.", "Spending takes money away, so subtract it: {s}.",
                 "What is left is the savings minus the spending: {s}."]],
    "stickers": [["Count the stickers in the first kind of pack: {s}.", "The first group of packs gives {s}.",
                  "Multiply to find the stickers in the first set of packs: {s}."],
                 ["Do the same for the other packs: {s}.", "The second group of packs gives {s}.",
                  "Then count the stickers in the second set of packs: {s}."],
                 ["Adding both amounts gives the total: {s}.", "Finally, add the two groups together: {s}.",
                  "Put them together to get the total number of stickers: {s}."]],
    "ages": [["The aunt's age is the younger person's age plus the difference: {s}.",
              "First find how old the aunt is by adding the difference in years: {s}.", "Add the age gap to get the aunt's age: {s}."],
             ["The cousin is half as old as the aunt, so divide by two: {s}.", "Half of the aunt's age gives the cousin's age: {s}.",
              "Then halve the aunt's age: {s}."]],
    "reading": [["First find how many pages have been read, pages per day times days: {s}.",
                 "Reading the same number of pages each day means multiplying: {s}.",
                 "The pages read so far are the daily amount times the number of days: {s}."],
                ["Subtract the pages read from the length of the book: {s}.", "The unread pages are what is left of the book: {s}.",
                 "Then take the pages already read away from the total: {s}."]],
}
_OP_VERB = {"+": ("add", "adding"), "-": ("subtract", "subtracting"), "*": ("multiply", "multiplying")}
_OP_THEN = {"+": ["add the last number to that result", "add on the number outside the brackets", "add the remaining number"],
            "-": ["subtract the last number from that result", "take away the number outside the brackets",
                  "subtract the remaining number"],
            "*": ["multiply that result by the last number", "multiply by the number outside the brackets",
                  "multiply it by the remaining number"],
            "/": ["divide that result by the last number", "divide by the number outside the brackets",
                  "divide it by the remaining number"]}
_ARITH_PROSE = [["Work inside the brackets first and {v} the two numbers there: {s}.",
                 "Brackets come first, so begin by {ving} the numbers inside them: {s}.",
                 "Start with the part in parentheses: {s}.", "The expression in brackets is worked out before anything else: {s}."],
                ["Then {then}: {s}.", "Next, {then}: {s}.", "After that, {then}: {s}.", "The last step is to {then}: {s}."]]
_ANSWER = ["The answer is {a}.", "So the answer is {a}.", "The final answer is {a}."]
_SHEETS: dict[str, tuple[list[str], list[str], list[str]]] = {  # (titles, openings, closings)
    "math": (["Worked examples: word problems", "Practice problems with full solutions", "Homework help: step by step solutions",
              "Mixed arithmetic practice", "Math club practice set", "Solving problems one step at a time",
              "Weekly practice sheet with answers", "Tutoring notes: multi-step problems"],
             ["The problems below come with full solutions, written one step at a time.",
              "Try each problem on your own first, then compare your work with the solution.",
              "Every step is written as a small calculation, so you can check it with a calculator.",
              "Most of these problems need two steps, and the trick is to decide which one comes first.",
              "Read each question carefully and ask yourself what is being counted.",
              "When a problem mixes operations, remember that brackets always come first.",
              "A quick estimate before you start is a good way to catch mistakes at the end.",
              "These exercises are the kind that appear in school tests and in everyday life.",
              "If you get stuck, write down what you know and what you need to find.",
              "Teachers often say that the hardest part of a word problem is the reading, not the arithmetic."],
             ["That is the end of this set, and the next one will be a little harder.",
              "Check your answers against the solutions and try again with the ones you missed.",
              "Practising a few problems every day is better than doing many at once.",
              "If you found these easy, try writing a similar problem of your own and solving it.",
              "Well done for working through the whole page."]),
    "letters": (["Spelling and letter counting practice", "How many letters? Worked answers", "Word puzzles with answers",
                 "Letter by letter: spelling exercises", "Counting letters in words", "Spelling practice for careful readers"],
                ["Counting letters sounds easy, but it is a classic trap for fast readers.",
                 "Each answer spells the word out first, because that makes the count easy to check.",
                 "These exercises practise looking at words one letter at a time.",
                 "Teachers use puzzles like these to help children slow down and look closely at words.",
                 "Some of the words are real and some are made up, but the method is the same for all of them.",
                 "A hyphen between the letters makes it easy to see each one on its own.",
                 "Double letters are where most mistakes happen, so pay attention to them."],
                ["That is all for this page, and there are more puzzles in the next one.",
                 "Try the same questions with your own name and the names of your friends.",
                 "Spelling a word out loud is a good habit for anyone who writes a lot.",
                 "If you got all of them right, try a longer word next time."]),
}
_LETTER_REMARKS = {
    "count_letter": ["Writing the word out like this makes the count easy to check.",
                     "Going letter by letter is slower than guessing, but it is always right.",
                     "Letters that appear more than once are easy to miss when reading quickly.",
                     "The same method works for any word, however long it is.",
                     "Checking each position in turn is the most reliable way to count."],
    "spell": ["The word has {n} letters in total.", "Saying each letter out loud helps to remember the spelling.",
              "Writing it down once or twice is the best way to learn it.", "That makes {n} letters from start to finish."],
}
_COUNT_PROSE = ["Spell it out: {spelled}. The letter {l} appears {where}, so the count is {n}.",  # = the solution
                "Written letter by letter, the word is {spelled}. We find {l} {where}, which makes {n}.",
                "Spelled out, it reads {spelled}, with the letter {l} {where}. That gives a count of {n}.",
                "Going through {spelled} one letter at a time, {l} turns up {where}, so the answer is {n}."]
_SPELL_PROSE = ["{w} is spelled {spelled}.", "The letters of {w} are {spelled}.", "Letter by letter, {w} is {spelled}.",
                "You spell {w} as {spelled}."]
_NUMBER_WORDS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
                 "sixteen seventeen eighteen nineteen twenty").split()
_LABELS = ["Problem {j}: ", "Question {j}. ", "Exercise {j}: ", "Example {j}. "]  # {j}: a number word (alphabetic)
_DONE = ["That is the answer.", "This is the final answer.", "That answers the question."]


def _explain(it: dict, pick: _Fresh, rng: random.Random) -> str:
    """A train item's worked solution in prose (the ``a*b=c`` steps and the answer stated once)."""
    w = it.get("word", "")
    spelled = "-".join(w)
    if it["kind"] == "count_letter":
        pos = [str(j + 1) for j, ch in enumerate(w) if ch == it["letter"]]
        where = f"at position{'s' if len(pos) > 1 else ''} {_join(pos)}" if pos else "nowhere"
        out = pick(_COUNT_PROSE).format(spelled=spelled, l=it["letter"], where=where, n=it["answer"])
        return out + " " + pick(_LETTER_REMARKS["count_letter"]) if rng.random() < 0.4 else out
    if it["kind"] == "spell":
        n = len(w)
        return (pick(_SPELL_PROSE).format(w=w, spelled=spelled) + " "
                + pick(_LETTER_REMARKS["spell"]).format(n=_NUMBER_WORDS[n] if n < 21 else n))
    if it["template"] in _STEP_PROSE:
        out = [pick(opts).format(s=s) for opts, s in zip(_STEP_PROSE[it["template"]], it["steps"])]
    else:  # (a op b) op c
        (s1, s2), ops = it["steps"], [ch for ch in it["expression"] if ch in "+-*/"]
        v, ving = _OP_VERB[ops[0]]
        out = [pick(_ARITH_PROSE[0]).format(s=s1, v=v, ving=ving), pick(_ARITH_PROSE[1]).format(s=s2, then=pick(_OP_THEN[ops[1]]))]
    return " ".join(out + [pick(_ANSWER if rng.random() < 0.5 else _DONE).format(a=it["answer"])])


def _deal(items: list[dict], rng: random.Random, lo: int = 3, hi: int = 6) -> list[list[dict]]:
    """Deal items into pages of lo..hi items, no template twice on a page while enough are left.

    Takes from the fullest template buckets first, so the buckets drain evenly and the last
    pages are not all one template.
    """
    buckets: dict[str, list[dict]] = {}
    for it in items:
        buckets.setdefault(it["template"], []).append(it)
    pages = []
    while any(buckets.values()):
        k, page = rng.randint(lo, hi), []
        while len(page) < k and any(buckets.values()):  # a template repeats only when < k are left
            live = sorted((b for b in buckets.values() if b), key=len, reverse=True)  # stable sort: deterministic
            page += [b.pop() for b in live[:k - len(page)]]
        pages.append(page)
    return pages


def _worksheets(items: list[dict], name: str, rng: random.Random) -> list[dict]:
    """Train items as worked-example pages: title, opening, 3-6 questions with prose solutions, closing."""
    titles, openings, closings = _SHEETS[name]
    docs = []
    for chunk in _deal([it for it in items if it["split"] == "train"], rng):
        pick = _Fresh(rng)
        label = rng.choice(_LABELS)
        lines = [pick(titles), " ".join(pick(openings) for _ in range(2 + (len(chunk) < 3)))]
        for j, it in enumerate(chunk):
            lines += [label.format(j=_NUMBER_WORDS[j + 1]) + it["question"], _explain(it, pick, rng)]
        lines.append(pick(closings))
        docs.append({"id": f"{name}/{chunk[0]['id']}", "text": "\n\n".join(lines), "source": name})
    return docs


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
