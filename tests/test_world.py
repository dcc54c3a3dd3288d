"""The synthetic world: deterministic, sized by its config, honest about what is in the corpus."""
import json
import random
import re

import pytest

from chatforge.assistant.convo import answer_matches
from chatforge.assistant.tools import calculate
from chatforge.common import CfError
from chatforge.world.build import ATTRIBUTES, World, WorldConfig, build_world, cli, load_world, qa_items, write_world
from chatforge.world.problems import CHAIN_STEPS, LETTER_COUNTS, drill_chains
from chatforge.world.pages import _PHRASES, ANSWER_PHRASES, QA_TEMPLATES, qa_page, short_answer

SMALL = dict(n_people=60, known_fraction=0.75, n_bios_per_person=3, n_cities=6, n_countries=2,
             n_universities=4, n_employers=5, n_filler_per_entity=2, n_problems=300, n_spelling=200)


@pytest.fixture(scope="module")
def world() -> World:
    return build_world(WorldConfig(seed=7, **SMALL))


def test_same_seed_same_bytes_different_seed_differs(tmp_path):
    a = write_world(build_world(WorldConfig(seed=7, **SMALL)), tmp_path / "a")
    b = write_world(build_world(WorldConfig(seed=7, **SMALL)), tmp_path / "b")
    c = write_world(build_world(WorldConfig(seed=8, **SMALL)), tmp_path / "c")
    for rel in ("world/world.json", "corpus/corpus.jsonl"):
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
        assert (a / rel).read_bytes() != (c / rel).read_bytes(), rel
    meta = json.loads((a / "corpus" / "corpus.json").read_text())
    assert meta["kind"] == "corpus" and meta["synthetic"] is True
    assert meta["source"] == "chatforge synthetic world, seed 7"
    assert (a / "world" / "meta.json").exists()
    # the round trip gives back the same world
    assert load_world(a).to_json() == build_world(WorldConfig(seed=7, **SMALL)).to_json()


def test_sizes_respected(world):
    cfg = world.config
    assert len(world.people) == cfg.n_people
    n_k = round(cfg.known_fraction * cfg.n_people)
    assert len(world.group("qa")) + len(world.group("heldout")) == n_k
    assert len(world.group("qa")) == round(cfg.qa_fraction * n_k)
    assert len(world.group("k1")) == round(cfg.k1_fraction * cfg.n_people)
    assert len(world.known) == n_k + len(world.group("k1"))
    assert all(len(p.bios) == (cfg.n_bios_per_person if p.group in ("qa", "heldout") else 1) for p in world.people)
    assert len({p.name for p in world.people}) == cfg.n_people  # names are unique
    assert 0.9 * cfg.n_problems <= len(world.problems) <= cfg.n_problems  # minus exact duplicates
    assert 0.5 * cfg.n_spelling <= len(world.letters) <= cfg.n_spelling
    other = [it for it in world.problems if it["kind"] != "chain"]
    assert sum(it["split"] == "test" for it in other) == round(cfg.test_fraction * len(other))
    for k in CHAIN_STEPS:  # chains: a fixed number held out per length (at most half of them)
        chains = [it for it in world.problems if it["kind"] == "chain" and len(it["steps"]) == k]
        assert sum(it["split"] == "test" for it in chains) == min(cfg.chain_test_per_length, len(chains) // 2) > 0
    kinds = {e["kind"] for e in world.entities}
    assert kinds == {"country", "city", "university", "employer", "field"}


def test_known_unknown_split(world):
    known, unknown = world.known, world.unknown
    assert unknown and known and not {p.id for p in known} & {p.id for p in unknown}
    docs = world.corpus_documents()
    text = "\n".join(d["text"] for d in docs if d["source"] != "directory")
    for p in unknown:  # an unknown person's name is only on fact-free directory pages
        assert not re.search(r"\b" + re.escape(p.name) + r"\b", text), p.name
    for p in known:
        assert p.name in text
    directories = "\n".join(d["text"] for d in docs if d["source"] == "directory")
    assert all(p.name in directories for p in unknown)
    for fact in {p.city for p in world.people} | {p.employer for p in world.people} | {p.birth_year for p in world.people}:
        assert fact not in directories
    # ... but every person can be found through the search tool's documents
    search_text = "\n".join(d["text"] for d in world.search_documents())
    assert all(p.name in search_text for p in world.people)


def test_bios_state_every_attribute(world):
    for p in world.people:
        for bio in p.bios:
            assert p.name in bio
            for a in ATTRIBUTES:
                assert p.attribute(a) in bio, (a, bio)
            for sentence in bio.split(". "):
                assert p.name in sentence, sentence  # the full name in every sentence
        assert len(set(p.bios)) == len(p.bios)  # paraphrased, not copies


def test_problem_answers_recompute(world):
    for pr in world.problems:
        assert calculate(pr["expression"]) == pr["answer"], pr
        for step in pr["steps"]:
            lhs, rhs = step.split("=")
            assert calculate(lhs) == int(rhs), step
        assert int(pr["steps"][-1].split("=")[1]) == pr["answer"]
        assert isinstance(pr["answer"], int)
    for it in world.letters:
        if it["kind"] == "count_letter":
            assert it["word"].count(it["letter"]) == it["answer"]
        elif it["kind"] == "spell_backwards":
            assert it["answer"] == "-".join(reversed(it["word"]))
        else:
            assert it["answer"] == "-".join(it["word"])


def test_held_out_chains_never_repeat_a_training_expression():
    """A test chain asked in other words is still a training chain: the split deduplicates by expression."""
    w = build_world(WorldConfig(seed=3, **{**SMALL, "n_problems": 2000}))
    train = {p["expression"] for p in w.problems if p["split"] == "train"}
    test = [p for p in w.problems if p["split"] == "test"]
    assert test and not any(p["expression"] in train for p in test)
    assert {len(p["steps"]) for p in test if p["kind"] == "chain"} == set(CHAIN_STEPS)


def test_drill_chains_are_fresh_valid_and_never_a_test_expression():
    """Midtraining's drill: distinct chains of every length, each step right, none a held-out expression."""
    w = build_world(WorldConfig(seed=3, **{**SMALL, "n_problems": 2000}))
    test = {p["expression"] for p in w.problems if p["split"] == "test"}
    drill = drill_chains(3000, seed=5, exclude=test)
    exprs = [d["expression"] for d in drill]
    assert len(exprs) == len(set(exprs)) == 3000 and not test & set(exprs)
    assert {len(d["steps"]) for d in drill} == set(CHAIN_STEPS)
    for d in drill:
        assert float(calculate(d["expression"])) == d["answer"] and d["expression"] in d["question"]
        assert d["steps"][-1].endswith(f"={d['answer']}")
    assert drill == drill_chains(3000, seed=5, exclude=test) != drill_chains(3000, seed=6, exclude=test)


def test_letter_counts_are_uniform_on_the_test_split():
    """The count is drawn first, so 'always answer 1' scores 25%, not the 63% of drawing the letter from the word."""
    w = build_world(WorldConfig(seed=3, **{**SMALL, "n_spelling": 1000, "letter_test": 200}))
    test = [t for t in w.letters if t["split"] == "test" and t["kind"] == "count_letter"]
    assert sorted(t["answer"] for t in test) == sorted(list(LETTER_COUNTS) * 50)
    train = [t for t in w.letters if t["split"] == "train" and t["kind"] == "count_letter"]
    assert {(t["word"], t["letter"]) for t in test}.isdisjoint((t["word"], t["letter"]) for t in train)


def test_test_split_never_in_corpus(world):
    text = "\n".join(d["text"] for d in world.corpus_documents())
    held_out = [it for it in world.problems + world.letters if it["split"] == "test"]
    assert held_out
    assert not any(it["question"] in text for it in held_out)
    assert all(it["question"] in text for it in world.problems if it["split"] == "train")


def test_corpus_documents_shape(world):
    docs = world.corpus_documents()
    assert docs == world.corpus_documents()  # deterministic order
    assert len({d["id"] for d in docs}) == len(docs)
    assert {d["source"] for d in docs} == {"bio", "qa", "directory", "filler", "math", "letters"}
    assert all(set(d) == {"id", "text", "source"} and d["text"] for d in docs)
    assert all(len(d["text"].split()) >= 50 for d in docs)  # Gopher's minimum document length


def test_bio_pages_mix_people_and_repeat_each_person(world):
    """Each known person is on n_bios_per_person pages, each time with another paraphrase; pages
    profile several people (a page repeating one person's bios is what Gopher's n-gram rules drop)."""
    pages = [d["text"] for d in world.corpus_documents() if d["source"] == "bio"]
    on_page = [{p.id for p in world.known if re.search(r"\b" + re.escape(p.name) + r"\b", t)} for t in pages]
    for p in world.known:
        mine = [t for t, ids in zip(pages, on_page) if p.id in ids]
        assert len(mine) == len(p.bios) == (world.config.n_bios_per_person if p.group != "k1" else 1), p.name
        assert all(any(b in t for t in mine) for b in p.bios)  # every bio is on one of them
    assert max(len(ids) for ids in on_page) >= 3
    assert sum(len(ids) for ids in on_page) / len(pages) >= 2.5


def test_corpus_survives_curation_filters(world):
    """The corpus passes the FineWeb pipeline's quality filters at their standard thresholds."""
    from datatrove.data import Document

    from chatforge.data import filters as F
    steps = [F.LanguageFilter(["en"], 0.65), F.GopherRepetition(), F.GopherQuality(min_doc_words=50),
             F.C4Filter(min_num_sentences=5), F.FineWebFilter()]
    docs = world.corpus_documents()
    failed = []
    for d in docs:
        doc = Document(text=d["text"], id=d["id"])
        for step in steps:
            r = step.filter(doc)
            if r is not True and not (isinstance(r, tuple) and r[0]):
                failed.append((d["id"], r))
                break
    assert len(failed) <= 0.02 * len(docs), failed[:5]


def test_qa_items(world):
    rng = random.Random(0)
    items = qa_items(world, world.unknown, rng)
    assert len(items) == len(world.unknown) * len(ATTRIBUTES)
    for it in items:
        p = next(q for q in world.people if q.id == it["person"])
        assert p.name in it["question"] and it["answer"] == p.attribute(it["attribute"])
        assert it["known"] is False
    assert len({it["question"].replace(it["name"], "") for it in items}) > 5  # paraphrased templates


def test_fact_answers_use_the_biographies_relation_words(world):
    # the answer puts the words a bio states the fact with in front of the value (pages.ANSWER_PHRASES),
    # never the name, and the checker still finds the value in it
    p = world.known[0]
    for a in ATTRIBUTES:
        ans = short_answer(a, p.attribute(a))
        assert p.name not in ans and answer_matches(ans, p.attribute(a))
        relation = ans[:ans.index(p.attribute(a))].strip().lower()
        stated = [t.lower() for t in _PHRASES[(a,)]]
        assert any(f"{{s}} {relation} {{{a}}}" in t or f"{{s}} was {relation} {{{a}}}" in t for t in stated), relation


def test_qa_page_never_repeats_an_answer_phrase(world):
    # three people's birthplaces answered with the same five words is a page Gopher's duplicated
    # n-gram rule drops (test_corpus_survives_curation_filters): each phrase at most once a page
    group = world.known[:3]
    used = []
    for line in qa_page(group, random.Random(0)).splitlines()[2:]:
        q, ans = line.removeprefix("Q: ").split(" A: ")
        p, a = next((p, a) for p in group for a in ATTRIBUTES for t in QA_TEMPLATES[a] if t.format(name=p.name) == q)
        used += [ph for ph in ANSWER_PHRASES[a] if short_answer(a, p.attribute(a), ph) == ans]
    assert len(used) == 3 * len(ATTRIBUTES) == len(set(used))


def test_default_size_and_identity(tmp_path):
    w = build_world(WorldConfig())
    n = sum(len(d["text"].encode()) for d in w.corpus_documents())
    assert 3e6 <= n <= 5e6, n  # ~2x the bare facts: the prose that makes them pass the web filters
    assert w.identity["name"] == "Forge" and w.identity["maker"] == "the chatforge project"
    f = tmp_path / "id.json"
    f.write_text(json.dumps({"name": "Anvil"}))
    assert build_world(WorldConfig(identity=str(f), **SMALL)).identity["name"] == "Anvil"
    f.write_text(json.dumps({"nmae": "Anvil"}))
    with pytest.raises(CfError, match="nmae"):
        build_world(WorldConfig(identity=str(f), **SMALL))
    with pytest.raises(CfError, match="known_fraction"):
        build_world(WorldConfig(known_fraction=1.5))


def test_cli(tmp_path, capsys):
    cli(["--run", str(tmp_path / "r"), "--n-people", "20", "--n-problems", "50", "--n-spelling", "20", "--seed", "3"])
    assert (tmp_path / "r" / "corpus" / "corpus.jsonl").exists()
    assert "corpus:" in capsys.readouterr().out
