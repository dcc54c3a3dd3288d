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
from chatforge.world.people import Person, made_up
from chatforge.world.pages import (ATTRIBUTES, QA_TEMPLATES, Fresh, bio, bio_groups, bio_page,
                                   directory_page, entity_page, qa_page, worksheets)
from chatforge.world.problems import make_letter_tasks, make_problems


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
    problems: list[dict]     # see problems.py for the format
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
    countries = [_unique(rng, lambda r: made_up(r, 2, _COUNTRY_END), used) for _ in range(cfg.n_countries)]
    cities = [{"kind": "city", "name": _unique(rng, lambda r: made_up(r, 2, _CITY_END), used),
               "country": rng.choice(countries), "founded": rng.randint(800, 1900),
               "population": rng.randint(20, 3000) * 1000,
               "river": made_up(rng, 1, _RIVERS_END),
               "features": rng.sample(_FEATURES, 2)} for _ in range(cfg.n_cities)]
    fields = list(FIELDS)
    unis = []
    for _ in range(cfg.n_universities):
        for _ in range(10000):
            city, form = rng.choice(cities)["name"], rng.choice(_UNI_FORMS)
            name = form.format(city=city, last=made_up(rng, 2, _LAST_END))
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
        name = _unique(rng, lambda r: f"{made_up(r, 2, [''])} {suffix}", used)
        employers.append({"kind": "employer", "name": name, "industry": industry,
                          "city": rng.choice(cities)["name"], "founded": rng.randint(1850, 2015),
                          "employees": rng.randint(1, 400) * 50})
    people = _make_people(cfg, rng, used, cities, unis, fields, employers)
    entities = ([{"kind": "country", "name": c} for c in countries] + cities + unis + employers
                + [{"kind": "field", "name": f, "definition": d} for f, d in FIELDS.items()])
    for e in entities:
        e["docs"] = [entity_page(e, entities, rng) for _ in range(cfg.n_filler_per_entity)]
    firsts = [p.first for p in people]
    problems = make_problems(cfg.n_problems, cfg.test_fraction, firsts, rng, cfg.chain_test_per_length)
    letters = make_letter_tasks(cfg.n_spelling, cfg.test_fraction, rng, cfg.letter_test)
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
        first = made_up(rng, rng.choice([1, 2]), _FIRST_END)
        full = _unique(rng, lambda r: f"{first} {made_up(r, rng.choice([1, 2]), _LAST_END)}", used)
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
