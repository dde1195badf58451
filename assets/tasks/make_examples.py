"""Writes the small example data sets of configs/example-*.toml: made-up
text from templates, so that the project ships data it wrote itself (no
download, no licence to track). They show the file formats and train in
seconds; they are not benchmarks.

    python3 assets/tasks/make_examples.py

Deterministic: the same files come out every time (a fixed seed), so a
diff after running it means the templates changed.
"""

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
rng = random.Random(8)

# --- classification: the sentiment of a short product review (TSV) ------

THINGS = ["kettle", "lamp", "backpack", "phone case", "blender", "desk chair",
          "umbrella", "keyboard", "tent", "water bottle", "toaster", "scarf"]
GOOD = ["works perfectly", "is sturdy and well made", "exceeded my hopes",
        "is a joy to use", "arrived early and works great",
        "is worth every penny", "looks lovely and lasts"]
BAD = ["broke after two days", "stopped working within a week",
       "is flimsy and cheap", "arrived damaged", "was a waste of money",
       "leaks everywhere", "feels poorly made"]
MEH = ["does the job", "is fine, nothing special", "is about what I expected",
       "works, though the colour is dull", "is okay for the price",
       "is neither good nor bad"]
OPENERS = ["The", "My new", "This", "Our"]
ENDINGS = ["", " I would buy it again.", " Would not recommend.",
           " Fair enough.", " Five stars from me.", " Returned it."]


def review(label):
    phrase = rng.choice({"positive": GOOD, "negative": BAD, "neutral": MEH}[label])
    ending = {
        "positive": rng.choice(["", ENDINGS[1], ENDINGS[4]]),
        "negative": rng.choice(["", ENDINGS[2], ENDINGS[5]]),
        "neutral": rng.choice(["", ENDINGS[3]]),
    }[label]
    return f"{rng.choice(OPENERS)} {rng.choice(THINGS)} {phrase}.{ending}"


def classification(n=240):
    labels = ["positive", "negative", "neutral"]
    rows = []
    for i in range(n):
        label = labels[i % 3]
        rows.append(f"{review(label)}\t{label}\n")
    rng.shuffle(rows)
    (HERE / "classification.tsv").write_text("".join(rows), encoding="utf-8")


# --- summarization: a short town-council report and its one-line summary --

TOWNS = ["Ashford", "Brightwater", "Caldmoor", "Dunmere", "Elmstead",
         "Fairhaven", "Glenrock", "Hollowbrook", "Ivybridge", "Juniper Falls"]
PLANS = [("build a new library", "a new library"),
         ("repair the old bridge", "bridge repairs"),
         ("open a weekly market", "a weekly market"),
         ("plant trees along the high street", "tree planting"),
         ("extend the cycle path", "a longer cycle path"),
         ("close the swimming pool", "closing the pool"),
         ("raise parking fees", "higher parking fees"),
         ("add a night bus", "a night bus")]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday"]
CONCERNS = ["the cost", "the noise during the works", "the loss of parking",
            "the time it would take", "who would pay for it"]


def summarization(n=180):
    rows = []
    for _ in range(n):
        town = rng.choice(TOWNS)
        plan, short = rng.choice(PLANS)
        yes, no = rng.randint(3, 9), rng.randint(0, 6)
        passed = yes > no
        concern = rng.choice(CONCERNS)
        hours = rng.randint(2, 5)
        doc = (
            f"The {town} town council met on {rng.choice(DAYS)} evening to decide "
            f"whether to {plan}. Residents filled the hall, and many spoke about "
            f"{concern}. After {hours} hours of debate the council voted {yes} to {no}. "
            + ("The work is due to start next spring."
               if passed else "The plan will not go ahead this year.")
        )
        summary = (f"{town} council approves {short}." if passed
                   else f"{town} council rejects {short}.")
        rows.append(json.dumps({"input": doc, "target": summary}, ensure_ascii=False) + "\n")
    (HERE / "summarization.jsonl").write_text("".join(rows), encoding="utf-8")


# --- question answering: SQuAD-style, the answer a span of the context ----

NAMES = ["Amira", "Bruno", "Chen", "Dalia", "Erik", "Farah", "Goran", "Hana",
         "Ivo", "Jun", "Kofi", "Lena"]
JOBS = ["baker", "nurse", "pilot", "teacher", "gardener", "carpenter", "chemist"]
CITIES = ["Lisbon", "Nairobi", "Osaka", "Quito", "Riga", "Tbilisi", "Hobart"]
PETS = ["a grey cat", "two goldfish", "an old dog", "a parrot", "a tortoise"]


def question_answering(n=200):
    rows = []
    for _ in range(n):
        name, job, city, pet = (rng.choice(NAMES), rng.choice(JOBS),
                                rng.choice(CITIES), rng.choice(PETS))
        year = rng.randint(1990, 2020)
        context = (f"{name} works as a {job} in {city}. {name} moved there in "
                   f"{year} and lives with {pet}.")
        q, a = rng.choice([
            (f"What does {name} do?", f"a {job}"),
            (f"Where does {name} work?", city),
            (f"When did {name} move to {city}?", str(year)),
            (f"Who lives with {name}?", pet),
        ])
        rows.append(json.dumps({"input": f"question: {q} context: {context}",
                                "target": a}, ensure_ascii=False) + "\n")
    (HERE / "question_answering.jsonl").write_text("".join(rows), encoding="utf-8")


classification()
summarization()
question_answering()
