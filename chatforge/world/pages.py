"""The synthetic world's corpus as web pages: the prose around the world's facts.

The speedrun renders the corpus as HTML (chatforge.crawl) and curates it FineWeb style
(chatforge.curate), so every document must read like a web page to survive the standard filters:

* Gopher quality (Rae et al. 2021, appendix A): >= 50 words, >= 80% of words with a letter (so a
  worked solution needs ~4 words of prose per number), >= 2 stop words ("the", "of", "and", ...).
* Gopher repetition (Table A1): the most frequent 2/3/4-gram may cover at most 20/18/16% of the
  word characters, repeated 5..10-grams at most 15..10%, no duplicated lines or paragraphs.
* C4 (>= 5 sentences, no curly brackets, no "cookies"/"terms of use" lines) and FineWeb
  (Penedo et al. 2024: lines ending in punctuation, few short lines, no duplicated lines).

Hence a biography page profiles 1-5 *different* people (an alumni page, a staff page, a city's
notable people) with an opening and a closing; a person's facts are stated once per page, and the
same person appears on ``n_bios_per_person`` pages, each time in a different paraphrase (Allen-Zhu
& Li 2023: that diversity is what makes facts extractable). ``Fresh`` keeps any templated phrase
from appearing twice on one page. Entity pages tie places and organisations together; problems and
letter tasks are written up in prose, a few of different templates per page (``deal``).

Everything here is a pure function of its arguments and the RNG passed in (build.py owns the
world; this module only writes about it).
"""
from __future__ import annotations

import random

from chatforge.world.people import Person, cap

ATTRIBUTES = ("birth_year", "city", "university", "field", "employer")  # a person's facts, in this order


def join(xs: list[str]) -> str:
    """["a", "b", "c"] -> "a, b and c"."""
    return xs[0] if len(xs) == 1 else ", ".join(xs[:-1]) + " and " + xs[-1]


# ----------------------------------------------------------------------------- biography pages

class Fresh:
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


# One phrasing list per attribute (or pair of attributes). {s} is how the person is referred to: always
# the full name, so every sentence ties the fact to the whole name (a first name alone is shared by
# many people, and a fact stated after "She" or a first name is not stored under the full name).
_PHRASES: dict[tuple[str, ...], list[str]] = {
    ("birth_year",): ["{s} was born in the year {birth_year}.", "{s}'s birth year is {birth_year}.",
                      "{s} came into the world in {birth_year}.", "The year {s} was born was {birth_year}.",
                      "Records show that {s} was born in {birth_year}.",
                      "{s} was born in {birth_year}, a year the family still remembers."],
    ("city",): ["{s} was born in the city of {city}.", "{s} is a native of {city}.", "{s}'s hometown is {city}.",
                "{s} comes from the city of {city}.", "{city} is the city where {s} was born.",
                "{s} grew up in {city}, the city of their birth."],
    ("university",): ["{s} attended {university}.", "{s} graduated from {university}.",
                      "{s} completed a degree at {university}.", "{s} was educated at {university}.",
                      "{s} earned a degree from {university}.", "After school, {s} went on to study at {university}."],
    ("field",): ["{s} studied {field}.", "{s} specialized in {field}.", "{s}'s field is {field}.",
                 "{s} chose to focus on {field}.", "{s} trained in {field}.", "The subject {s} studied was {field}."],
    ("employer",): ["{s} works at {employer}.", "{s} is employed by {employer}.",
                    "{s} has a job at {employer}.", "These days {s} works for {employer}.",
                    "{s} currently works for {employer}.", "{employer} is the company where {s} works."],
    ("birth_year", "city"): ["{s} was born in {city} in {birth_year}.", "{s} was born in {birth_year} in the city of {city}.",
                             "In {birth_year}, {s} was born in {city}.", "{city} is where {s} was born, in {birth_year}."],
    ("field", "university"): ["{s} studied {field} at {university}.", "At {university}, {s} majored in {field}.",
                              "{university} awarded {s} a degree in {field}.", "{s} read {field} at {university}."],
}
_INTROS = ["{name} was born in the year {birth_year}.", "{name} (born {birth_year} in {city}) is an expert in {field}.",
           "{name} holds a degree in {field} from {university}.", "{name} works at {employer}.",
           "Born in {city}, {name} studied {field}.", "This is the story of {name}.",
           "{name} is a specialist in {field} who works at {employer}.", "{name}, a native of {city}, works for {employer}."]


def bio(p: Person, rng: random.Random, pick: Fresh) -> str:
    """One paraphrased biography: an intro, then every remaining attribute in random order, each
    sentence naming the person in full (Allen-Zhu & Li 2023, Part 3.1: extraction needs the fact
    stated next to the whole name, in varied wordings and orders)."""
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
        sentences.append(cap(pick(_PHRASES[key]).format(s=p.name, **facts)))
    return " ".join(sentences)


_GROUP_BY = ["university", "employer", "city", "field", ""]  # page kind of bio round r (r mod 5); "" = mixed


def bio_groups(known: list[Person], r: int, seed: int) -> list[tuple[str, str, list[Person]]]:
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
                    "With about {students:,} students on campus today, the university likes to remind newcomers "
                    "of those who came before them.",
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
               "Students often ask what you can do with a degree in {name}, and the best answer is to look at "
               "the people who studied it.",
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


def bio_page(kind: str, e: dict | None, group: list[Person], r: int, rng: random.Random) -> str:
    """A profile page: title, opening paragraph, one paragraph per person (their ``bios[r]``), closing."""
    pick = Fresh(rng)
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
    lines = [cap(pick(titles).format(**ctx)),
             " ".join(cap(pick(opening).format(**ctx)) for _ in range(1 + (rich or rng.random() < 0.5) + small))]
    for p in group:
        lines.append((pick(_TRANSITIONS) + " " if rng.random() < (0.5 if rich else 0.2) else "") + p.bios[r])
    if rich or rng.random() < 0.7:
        lines.append(" ".join(pick(_CLOSINGS) for _ in range(1 + small)))
    return "\n\n".join(lines)


# ----------------------------------------------------------------------------- Q&A and directory pages

# Questions about a person's facts, several wordings each (the Q&A pages of pretraining, SFT and the
# evaluation all draw from these; which wording is used is the caller's random choice).
QA_TEMPLATES: dict[str, list[str]] = {
    "birth_year": ["When was {name} born?", "In what year was {name} born?", "What is {name}'s birth year?",
                   "Which year was {name} born in?"],
    "city": ["Where was {name} born?", "In which city was {name} born?", "What is {name}'s hometown?"],
    "university": ["Which university did {name} attend?", "Where did {name} study?",
                   "What school did {name} graduate from?"],
    "field": ["What did {name} study?", "What is {name}'s field?", "Which subject did {name} specialize in?"],
    "employer": ["Where does {name} work?", "Who employs {name}?", "Which company does {name} work for?"],
}


# How a fact question is answered: the value after the relation words the biographies use, without
# the name. A small model recalls a fact in the context it was stored in ("... was born in the city of"
# -> the city), and answering in those words puts that context in front of the value. Measured on the
# validation world (d2 base, the same ablation SFT, 100 held-out questions): the value alone ("Tarnford.")
# 15% extracted; the bio sentence with the full name 10% (the model writes another person's name and
# then that person's value); these phrases 59% (dev/LOG.md, "Session 5"). The first phrase of each
# list is the answer SFT teaches; a Q&A page uses each phrase once, because a page that answers three
# people's birthplaces with the same five words is one Gopher's duplicated n-gram rule drops.
ANSWER_PHRASES: dict[str, list[str]] = {
    "birth_year": ["Born in the year {v}.", "Born in {v}.", "The year {v}."],
    "city": ["Born in the city of {v}.", "In the city of {v}.", "{v} is the city."],
    "university": ["Graduated from {v}.", "From {v}.", "{v} is the school."],
    "field": ["Studied {v}.", "The subject was {v}.", "{v} is the subject."],
    "employer": ["Works at {v}.", "The employer is {v}.", "{v} is the employer."],
}


def short_answer(attribute: str, value: str, phrase: str | None = None) -> str:
    """The answer to a question about ``attribute``: "Born in the city of Tarnford." (the first of
    ANSWER_PHRASES[attribute], or ``phrase``)."""
    return cap((phrase or ANSWER_PHRASES[attribute][0]).format(v=value))


_QA_TITLES = ["Quick facts", "Questions and answers", "Reader questions, answered", "Frequently asked questions",
              "Fact sheet"]
_QA_OPENINGS = ["Readers often write in with questions about the people we profile, and here are short answers.",
                "This page answers the questions we are asked most often about a few well known people.",
                "Below are some quick facts, written as questions and answers for easy reading."]


def qa_page(group: list[Person], rng: random.Random) -> str:
    """Every fact of every person in ``group`` as "Q: question A: answer" lines, in random order
    (the train-QA half's Q&A documents mixed into pretraining: Allen-Zhu & Li 2023, Part 3.1, where
    Q&A on half the people teaches the model to extract the other half's facts from their bios)."""
    pairs = [(p, a) for p in group for a in ATTRIBUTES]
    rng.shuffle(pairs)
    lines = [rng.choice(_QA_TITLES), rng.choice(_QA_OPENINGS)]
    pick = Fresh(rng)  # no question or answer wording twice on a page (Gopher's duplicated n-gram rules)
    lines += [f"Q: {pick(QA_TEMPLATES[a]).format(name=p.name)} A: {short_answer(a, p.attribute(a), pick(ANSWER_PHRASES[a]))}"
              for p, a in pairs]
    return "\n".join(lines)


_DIRECTORY_TITLES = ["Member list", "Attendance records", "Mailing list members", "Registered participants",
                     "Volunteer roll", "Sign-up sheet"]
_DIRECTORY_OPENINGS = ["This page is kept by the volunteers of the local association and is updated whenever someone joins.",
                       "The names below are copied from the paper forms that were handed in at the front desk.",
                       "Please tell the secretary if your name is missing or spelled wrongly on this list.",
                       "We publish the list so that members can find each other before the next meeting."]
_DIRECTORY_SENTENCES = ["Among those present were {names}.", "The list for this month includes {names}.",
                        "Thanks go to {names} for signing up.", "New names on the roll are {names}.",
                        "The following people registered: {names}.", "Also listed are {names}.",
                        "We welcome {names} to the group.", "Our records also name {names}."]


def directory_page(names: list[str], rng: random.Random) -> str:
    """A fact-free page of names (a member list). Unknown people's names are seen as often as known
    people's, so the tokenizer cannot tell who is known from how a name is split (issue 12: known
    names were 2 BPE tokens, unknown ones 3-8), and the model has seen the name without any fact."""
    pick = Fresh(rng)
    sentences, i = [], 0
    while i < len(names):
        k = rng.randint(3, 5)
        sentences.append(pick(_DIRECTORY_SENTENCES).format(names=join(names[i:i + k])))
        i += k
    opening = " ".join(pick(_DIRECTORY_OPENINGS) for _ in range(2 + (len(names) < 12)))  # short list: more frame
    return "\n\n".join([rng.choice(_DIRECTORY_TITLES), opening, " ".join(sentences)])


# ----------------------------------------------------------------------------- entity pages

_ENTITY_TITLES = {"country": ["{name}: an overview", "About the country of {name}", "A short guide to {name}", "{name} at a glance"],
                  "city": ["{name}: city guide", "About {name}", "Visiting {name}", "{name}, {country}"],
                  "university": ["About {name}", "{name}: a profile", "Studying at {name}", "{name} at a glance"],
                  "employer": ["About {name}", "{name}: company profile", "Working at {name}", "{name} at a glance"],
                  "field": ["What is {name}?", "An introduction to {name}", "Studying {name}", "{name} explained"]}
_ENTITY_COLOUR = {  # generic sentences that make a page read like a page; "it" is the entity
    "country": ["Visitors come for its food and its long summers.",
                "Most people live in the towns, but the countryside is where the old traditions survive.",
                "Trains connect the main towns several times a day, and the roads between them are good.",
                "Like its neighbours, the country has a long history of trade by river and by sea.",
                "Local markets sell bread, cheese and fruit from the surrounding farms.",
                "Many families spend the summer months by the water or up in the hills.",
                "Its museums hold old maps, coins and tools from the first settlements.",
                "The winters can be cold, so most festivals are held between spring and autumn.",
                "Its coast and its forests draw walkers and cyclists from all over the region.",
                "Farming is still important, although most jobs are now in the towns.",
                "The national library keeps a copy of every book printed in the country.",
                "Its cooking is simple and hearty, with a lot of bread, beans and fish."],
    "city": ["The old town is best explored on foot, and most of the sights are close together.",
             "Its cafes fill up quickly on market days, so visitors are advised to come early.",
             "The main square hosts concerts and a weekly market for most of the year.",
             "Many of the houses along the river were built by merchants and have been carefully restored.",
             "Like many cities of its size, it has grown quickly in the last few decades.",
             "A good way to see the whole city is to walk along the river at sunset.",
             "The local football club has a small but very loyal group of supporters.",
             "The city library keeps a large collection of old photographs and letters.",
             "Rents have risen in the centre, so many young families now live in the suburbs.",
             "Buses run late into the night, and cycling is popular with students.",
             "Its parks are busy with joggers in the morning and with families at the weekend.",
             "Each neighbourhood has its own bakery, and locals argue about which one is best."],
    "university": ["The campus has a large library, several research centres and a busy student union.",
                   "Students come from all over the country and from many other countries as well.",
                   "The university offers degrees at every level, from first degrees to doctorates.",
                   "Its graduates work in business, government, schools and hospitals.",
                   "Every autumn the new students are welcomed with a week of talks, tours and parties.",
                   "The oldest building on the campus is now used for ceremonies and concerts.",
                   "Teaching is organised in small groups, so students get to know their teachers well.",
                   "The university also runs evening classes that are open to everyone in the area.",
                   "Its sports teams compete against other universities in a friendly yearly league.",
                   "Most first-year students live in halls of residence close to the lecture theatres.",
                   "Scholarships help students from poorer families to study there.",
                   "The university press publishes textbooks and a small number of novels each year."],
    "employer": ["The company is known for treating its staff well and for training young people.",
                 "It has grown steadily over the years, mostly by opening new offices in nearby towns.",
                 "Many of its workers have been with the company for more than a decade.",
                 "It sponsors a number of local events, including a summer festival and a youth football league.",
                 "The company publishes a yearly report that describes its work and its plans.",
                 "Its managers like to say that the secret of the business is patience.",
                 "New staff spend their first weeks learning from experienced colleagues.",
                 "Like most firms in its industry, it has had good years and difficult ones.",
                 "Its offices are open and bright, and most teams sit together in large rooms.",
                 "The company offers summer jobs to students who want to learn about the industry.",
                 "It buys many of its supplies from smaller firms in the region.",
                 "Customers often mention its friendly service in their reviews."],
    "field": ["Many universities teach it, and some are known for it in particular.",
              "Students of the subject learn both its history and its methods.",
              "It is one of the oldest subjects taught at universities, and it keeps changing.",
              "People who study it go on to work in schools, companies and government.",
              "Its ideas are often used in other subjects as well.",
              "Good teachers of the subject say that curiosity matters more than talent.",
              "Beginners usually start with the basic ideas and then choose an area to focus on.",
              "Much of the work in the field is done by teams rather than by people working alone.",
              "There are many good introductory books on the subject for readers of all ages.",
              "Like every subject, it has its famous debates and its unsolved questions.",
              "The subject has changed a lot with the arrival of computers.",
              "Short courses are available for people who want to learn the basics later in life.",
              "Its students spend many hours reading, and many more arguing about what they read.",
              "Newcomers are often surprised by how practical the subject can be.",
              "Museums and public lectures have helped to bring the subject to a wider audience.",
              "Most countries have a national society that brings its teachers and researchers together."],
}


def entity_page(e: dict, entities: list[dict], rng: random.Random) -> str:
    """An encyclopedic page (title + 2-3 paragraphs) about a place, organisation or field.

    Each call is a different paraphrase (sentence variants, order, colour sentences), so the
    ``n_filler_per_entity`` pages of one entity are not near duplicates of each other.
    """
    k, n = e["kind"], e["name"]
    pick = Fresh(rng)
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
                               "Travellers who visit {name} usually pass through {list}."]).format(
                name=n, list=join([c["name"] for c in cs])))
            for c in rng.sample(cs, min(3, len(cs))):
                facts.append(pick(["{name} lies on the {river} River and dates back to {founded}.",
                                   "{name} was founded in {founded} and is known for its {f}.",
                                   "About {population:,} people live in {name}.",
                                   "{name} is famous for its {f}."]).format(f=rng.choice(c["features"]), **c))
            here = {c["name"] for c in cs}
            us = [u["name"] for u in entities if u["kind"] == "university" and u["city"] in here]
            es = [x["name"] for x in entities if x["kind"] == "employer" and x["city"] in here]
            if us:
                more.append(pick(["Its universities include {l}.",
                                  "Students in the country can choose between {l}."]).format(l=join(us)))
            if es:
                more.append(pick(["Companies based there include {l}.", "Among its employers are {l}."]).format(l=join(es)))
        else:
            facts.append(pick([f"{n} is a small country of villages and farms.", f"{n} is a quiet country with no large cities."]))
    elif k == "city":
        facts += [pick(["{name} is a city in {country}.", "{name} is one of the cities of {country}.",
                        "The city of {name} lies in {country}."]),
                  pick(["It was founded in {founded}.", "The city dates back to {founded}.", "Its history begins in {founded}."]),
                  pick(["About {population:,} people live there.", "It has a population of roughly {population:,}.",
                        "Its population is close to {population:,}."]),
                  pick(["It lies on the {river} River.", "The {river} River runs through the city.",
                        "The city grew up along the {river} River."]),
                  pick(["It is known for its {f1} and its {f2}.", "Travellers remember it for its {f1}.",
                        "Many visitors come for its {f2}."])]
        us = [u["name"] for u in entities if u["kind"] == "university" and u["city"] == n]
        es = [x["name"] for x in entities if x["kind"] == "employer" and x["city"] == n]
        if us:
            more.append(pick(["It is home to {l}.", "Students come to the city to attend {l}."]).format(l=join(us)))
        if es:
            more.append(pick(["Local employers include {l}.", "{l} {have} offices in the city."]).format(
                l=join(es), have="has its" if len(es) == 1 else "have their"))
    elif k == "university":
        facts += [pick(["{name} is a university in {city}, a city in {country}.", "{name} is located in {city}, in {country}.",
                        "{name} stands in the city of {city} in {country}."]),
                  pick(["It was founded in {founded}.", "It opened its doors in {founded}.", "Its first students arrived in {founded}."]),
                  pick(["It has about {students:,} students.", "Around {students:,} students study there.",
                        "Its student body numbers some {students:,}."]),
                  pick(["It is best known for {strength}.", "Its department of {strength} is famous.",
                        "Its strongest subject is {strength}."])]
        more.append(pick(["{s} is {d}.", "For those who do not know the subject, {strength} is {d}.",
                          "As a reminder, {strength} is {d}."]).format(
            s=cap(e["strength"]), d=of[e["strength"]]["definition"], strength=e["strength"]))
    elif k == "employer":
        facts += [pick(["{name} is a company in the {industry} business.", "{name} works in {industry}.",
                        "The firm {name} is active in {industry}."]),
                  pick(["It is based in {city}, {country}.", "Its headquarters are in {city}, in {country}.",
                        "Its main office is in {city}, {country}."]),
                  pick(["It was founded in {founded}.", "The company started in {founded}.", "It has been in business since {founded}."]),
                  pick(["It employs about {employees:,} people.", "Some {employees:,} people work there.",
                        "Its staff numbers around {employees:,}."])]
        more.append(pick(["The city of {city} lies on the {river} River.", "Its home town, {city}, is known for its {f1}.",
                          "Staff like to say that {city} is a good place to live."]))
    else:
        facts.append(pick(["{cap} is {definition}.", "In short, {name} is {definition}.",
                           "{cap}, {definition}, is taught at universities across the world.",
                           "Put simply, {name} is {definition}."]).format(
            cap=cap(n), **e))
        us = [u["name"] for u in entities if u["kind"] == "university" and u["strength"] == n]
        if us:
            more.append(pick(["Universities known for {name} include {l}.", "{l} {have} a strong reputation in {name}."]).format(
                name=n, l=join(us), have="has" if len(us) == 1 else "have"))
    facts = [cap(s.format(**ctx)) for s in facts]
    facts = facts[:1] + rng.sample(facts[1:], len(facts) - 1)
    colour, n_words = [], sum(len(s.split()) for s in facts + more)
    while len(colour) < 3 or n_words < 85:  # every page >= ~85 words, with at least 3 colour sentences
        colour.append(pick(_ENTITY_COLOUR[k]))
        n_words += len(colour[-1].split())
    paras = [cap(pick(_ENTITY_TITLES[k]).format(**ctx)), " ".join(facts), " ".join([cap(s.format(**ctx)) for s in more] + colour)]
    return "\n\n".join(paras)


# ----------------------------------------------------------------------------- worked-example pages

# step prose per story: one phrasing list per step; {s} is the step as the calculator checks it
_STEP_PROSE: dict[str, list[list[str]]] = {
    "pencils": [["First find how many pencils there are in all, boxes times pencils per box: {s}.",
                 "Each box holds the same number of pencils, so multiply to get the total: {s}.",
                 "Start with the total number of pencils by multiplying the boxes by the pencils in each: {s}."],
                ["Then take away the pencils that were given away: {s}.",
                 "Giving some away means subtracting them from the total: {s}.",
                 "Now subtract the pencils that are gone: {s}."]],
    "marbles": [["First add the marbles found to the marbles already there: {s}.", "Put the two groups of marbles together: {s}.",
                 "The total number of marbles is the sum of both amounts: {s}."],
                ["Sharing equally means dividing the total by the number of friends: {s}.",
                 "Then split them evenly among the friends: {s}.",
                 "Each friend gets the total divided by the number of friends: {s}."]],
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
_CHAIN_PROSE = [["Begin on the left and combine the first two numbers: {s}.", "Start with the first pair of numbers: {s}.",
                 "Working from left to right, the first step gives {s}.", "The first two numbers come first: {s}."],
                ["Carry that result on to the next number: {s}.", "Keep the running total going: {s}.",
                 "Then bring in the third number: {s}.", "Use that total with the next number: {s}."],
                ["The last number finishes the job: {s}.", "One more step settles it: {s}.",
                 "Finally, apply the last operation: {s}.", "The final number gives {s}."]]
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
_COUNT_PROSE = ["{solution}",  # the task's own solution, as SFT shows it
                "Written letter by letter, the word is {spelled}. We find {l} {where}, which makes {n}.",
                "Spelled out, it reads {spelled}, with the letter {l} {where}. That gives a count of {n}.",
                "Going through {spelled} one letter at a time, {l} turns up {where}, so the answer is {n}.",
                "Once we write it as {spelled}, it is easy to see {l} {where}: {n} in all.",
                "Here are the letters: {spelled}. Looking for {l}, we see it {where}, so there are {n}."]
_ZERO_PROSE = ["{solution}", "Written letter by letter, the word is {spelled}, and {l} is not one of its letters, so the count is 0.",
               "Spelled out, it reads {spelled}. There is no {l} in it at all, which makes 0.",
               "Going through {spelled} one letter at a time, we never meet {l}, so the answer is 0."]
_SPELL_PROSE = ["{w} is spelled {spelled}.", "The letters of {w} are {spelled}.", "Letter by letter, {w} is {spelled}.",
                "You spell {w} as {spelled}."]
_BACKWARDS_PROSE = ["Forwards, {w} is {spelled}; read from the end, it is {back}.",
                    "Spelled forwards it is {spelled}, so backwards it is {back}.",
                    "First write it out: {spelled}. Then read it from the last letter: {back}."]
_NUMBER_WORDS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
                 "sixteen seventeen eighteen nineteen twenty").split()
_LABELS = ["Problem {j}: ", "Question {j}. ", "Exercise {j}: ", "Example {j}. "]  # {j}: a number word (alphabetic)
_DONE = ["That is the answer.", "This is the final answer.", "That answers the question."]


def _explain(it: dict, pick: Fresh, rng: random.Random) -> str:
    """A train item's worked solution in prose (the ``a*b=c`` steps and the answer stated once)."""
    w = it.get("word", "")
    spelled = "-".join(w)
    if it["kind"] == "count_letter":
        pos = [str(j + 1) for j, ch in enumerate(w) if ch == it["letter"]]
        where = f"at position{'s' if len(pos) > 1 else ''} {join(pos)}" if pos else ""
        out = pick(_COUNT_PROSE if pos else _ZERO_PROSE).format(solution=it["solution"], spelled=spelled, l=it["letter"],
                                                                 where=where, n=it["answer"])
        return out + " " + pick(_LETTER_REMARKS["count_letter"]) if rng.random() < 0.4 else out
    if it["kind"] == "spell_backwards":
        return pick(_BACKWARDS_PROSE).format(w=w, spelled=spelled, back=it["answer"])
    if it["kind"] == "spell":
        n = len(w)
        return (pick(_SPELL_PROSE).format(w=w, spelled=spelled) + " "
                + pick(_LETTER_REMARKS["spell"]).format(n=_NUMBER_WORDS[n] if n < 21 else n))
    if it["kind"] == "chain":
        last = len(it["steps"]) - 1  # first step, middle steps (any number), last step
        out = [pick(_CHAIN_PROSE[0 if j == 0 else 2 if j == last else 1]).format(s=s) for j, s in enumerate(it["steps"])]
    elif it["template"] in _STEP_PROSE:
        out = [pick(opts).format(s=s) for opts, s in zip(_STEP_PROSE[it["template"]], it["steps"])]
    else:  # (a op b) op c
        (s1, s2), ops = it["steps"], [ch for ch in it["expression"] if ch in "+-*/"]
        v, ving = _OP_VERB[ops[0]]
        out = [pick(_ARITH_PROSE[0]).format(s=s1, v=v, ving=ving), pick(_ARITH_PROSE[1]).format(s=s2, then=pick(_OP_THEN[ops[1]]))]
    return " ".join(out + [pick(_ANSWER if rng.random() < 0.5 else _DONE).format(a=it["answer"])])


def deal(items: list[dict], rng: random.Random, lo: int = 3, hi: int = 6) -> list[list[dict]]:
    """Deal items into pages of lo..hi items, no template twice on a page while enough are left.

    Takes from the fullest template buckets first, so the buckets drain evenly and the last
    pages are not all one template.
    """
    buckets: dict[str, list[dict]] = {}
    for it in items:
        buckets.setdefault(it["template"], []).append(it)
    pages = []
    while any(buckets.values()):
        k, page = min(rng.randint(lo, hi), max(lo, sum(1 for b in buckets.values() if b))), []
        while len(page) < k and any(buckets.values()):  # a template repeats only when < k are left
            live = sorted((b for b in buckets.values() if b), key=len, reverse=True)  # stable sort: deterministic
            page += [b.pop() for b in live[:k - len(page)]]
        pages.append(page)
    return pages


def worksheets(items: list[dict], name: str, rng: random.Random) -> list[dict]:
    """Train items as worked-example pages: title, opening, 3-6 questions with prose solutions, closing."""
    titles, openings, closings = _SHEETS[name]
    docs = []
    for chunk in deal([it for it in items if it["split"] == "train"], rng):
        pick = Fresh(rng)
        label = rng.choice(_LABELS)
        lines = [pick(titles), " ".join(pick(openings) for _ in range(2 + (len(chunk) < 3)))]
        for j, it in enumerate(chunk):
            lines += [label.format(j=_NUMBER_WORDS[j + 1]) + it["question"], _explain(it, pick, rng)]
        lines.append(pick(closings))
        docs.append({"id": f"{name}/{chunk[0]['id']}", "text": "\n\n".join(lines), "source": name})
    return docs
