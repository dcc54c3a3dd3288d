"""Math problems and letter tasks of the synthetic world: generators, train/test splits, drills.

* word problems (stories with 2-3 steps), 2-4 digit arithmetic, and chains of 2-5 additions and
  subtractions on small numbers (the "tokens to think" experiment); every step is "<expr>=<value>"
  that the calculator re-checks, and the test split never shares an *expression* with training;
* letter counting (the true count uniform over ``LETTER_COUNTS``), spelling and spelling backwards;
* drills: fresh chains for midtraining's tool-use drill (never a test expression).

All of it is drawn from the ``random.Random`` passed in (``build.build_world`` passes the world's),
so the same seed gives the same items.
"""
from __future__ import annotations

import random

from chatforge.common import CfError
from chatforge.world.people import made_up

# ----------------------------------------------------------------------------- math problems
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


def make_problems(n: int, test_fraction: float, names: list[str], rng: random.Random,
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


# ----------------------------------------------------------------------------- letter tasks

REAL_WORDS = ["strawberry", "banana", "mississippi", "raspberry", "committee", "bookkeeper",
              "balloon", "coffee", "letter", "parallel", "necessary", "accommodate", "occurrence",
              "tomorrow", "address", "programming", "language", "assistant", "butterfly", "chocolate",
              "elephant", "giraffe", "pineapple", "umbrella", "hippopotamus", "broccoli", "cinnamon",
              "dessert", "embarrass", "happiness", "millennium", "possession", "success", "vacuum",
              "bottleneck", "keyboard", "referee", "tennessee", "peppermint", "grammar", "rhythm",
              "cucumber", "zucchini", "apple", "tomato", "sunflower", "waterfall", "mountain"]

_COUNT_QUESTIONS = ["How many {l}'s are in the word '{w}'?", "How many times does the letter {l} appear in '{w}'?",
                    "Count the letter {l} in the word '{w}'."]
_SPELL_QUESTIONS = ["Spell the word '{w}' letter by letter.", "How do you spell '{w}'?",
                    "Write out the letters of '{w}'."]
_BACKWARDS_QUESTIONS = ["Spell '{w}' backwards.", "What is '{w}' spelled backwards?",
                        "Write the letters of '{w}' in reverse order."]
LETTER_COUNTS = (0, 1, 2, 3)  # the true count of a letter task is uniform over these: the prior is 25%


def _letter_word(rng: random.Random) -> str:
    return rng.choice(REAL_WORDS) if rng.random() < 0.4 else made_up(rng, rng.randint(2, 4), [""]).lower()


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


def make_letter_tasks(n: int, test_fraction: float, rng: random.Random, letter_test: int) -> list[dict]:
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
