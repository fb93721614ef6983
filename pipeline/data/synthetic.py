"""Built-in synthetic instruction tasks from clearly different domains (the embedded default).

Each task enumerates its whole space of (input, output) pairs once, deterministically, then
draws `n` distinct inputs from it with a seeded, version-stable RNG. Enumerating (rather than
drawing until enough are unique) makes uniqueness exact and the capacity known, so asking for
more records than a task can make is a clear error instead of a silent short task.
Classification tasks draw the same number of records per label, so no label dominates.

The rules are meant to be learnable by a 135M model with a rank-8 adapter in ~40 steps: the
label is decidable from words in the input, and every task answers in one fixed format.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass

from pipeline.data import synthetic_words as W
from pipeline.data.records import normalise_text, stable_rng, stable_sample, stable_shuffle
from pipeline.errors import DataError

Pair = tuple[str, str]  # (input, output)


@dataclass(frozen=True)
class SyntheticTask:
    name: str
    description: str
    instruction: str
    labels: tuple[str, ...] | None  # the label set of a classification task, else None
    candidates: Callable[[], list[Pair]]  # every (input, output) the task can produce

    @property
    def capacity(self) -> int:
        return len(_unique(self.candidates()))

    def generate(self, n: int, seed: int) -> list[dict[str, str]]:
        """`n` records {instruction, input, output}, identical for the same (n, seed)."""
        pool = _unique(self.candidates())
        if n > len(pool):
            raise DataError(f"synthetic generator {self.name!r} can make at most {len(pool)} unique records, "
                            f"asked for {n}: lower data.synthetic_size")
        rng = stable_rng("synthetic", self.name, seed)
        picked = _balanced(pool, n, rng) if self.labels else stable_sample(pool, n, rng)
        return [{"instruction": self.instruction, "input": i, "output": o} for i, o in picked]


SYNTHETIC: dict[str, SyntheticTask] = {}


def register(name: str, description: str, instruction: str,
             labels: list[str] | None = None) -> Callable[[Callable[[], list[Pair]]], Callable[[], list[Pair]]]:
    def wrap(fn: Callable[[], list[Pair]]) -> Callable[[], list[Pair]]:
        SYNTHETIC[name] = SyntheticTask(name, description, instruction, tuple(labels) if labels else None, fn)
        return fn

    return wrap


def get_generator(name: str) -> SyntheticTask:
    if name not in SYNTHETIC:
        raise DataError(f"unknown synthetic generator {name!r}; known generators: {', '.join(SYNTHETIC)} "
                        f"(`slm prepare --list-synthetic` describes them)")
    return SYNTHETIC[name]


def describe_generators() -> str:
    lines = ["built-in synthetic task generators (source: {type: synthetic, generator: NAME}):"]
    for t in SYNTHETIC.values():
        labels = ", ".join(t.labels) if t.labels else "free-form answer"
        lines.append(f"  {t.name:<16} {t.description} [{labels}; up to {t.capacity} records]")
    return "\n".join(lines)


def _unique(pairs: list[Pair]) -> list[Pair]:
    """First occurrence of each normalised input: two templates may render the same text."""
    seen: dict[str, Pair] = {}
    for pair in pairs:
        seen.setdefault(normalise_text(pair[0]), pair)
    return list(seen.values())


def _balanced(pool: list[Pair], n: int, rng: random.Random) -> list[Pair]:
    """`n` pairs, round-robin over labels (a label that runs out leaves room to the others)."""
    by_label: dict[str, list[Pair]] = {}
    for pair in pool:
        by_label.setdefault(pair[1], []).append(pair)
    queues = [stable_shuffle(group, rng) for _, group in sorted(by_label.items())]
    picked: list[Pair] = []
    for row in itertools.zip_longest(*queues):
        picked.extend(p for p in row if p is not None)
        if len(picked) >= n:
            break
    return stable_shuffle(picked[:n], rng)


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


# ---- the tasks ---------------------------------------------------------------------------------


@register("sentiment", "short restaurant/product reviews -> positive or negative",
          "Is the sentiment of this review positive or negative?", ["positive", "negative"])
def _sentiment() -> list[Pair]:
    out: list[Pair] = []
    for label, adjs, closers in (("positive", W.POSITIVE_WORDS, W.POSITIVE_CLOSERS),
                                 ("negative", W.NEGATIVE_WORDS, W.NEGATIVE_CLOSERS)):
        for item, a in itertools.product(W.REVIEW_ITEMS, adjs):
            out.append((f"Honestly, the {item} is {a}.", label))
            out.extend((f"Our {item} turned out {a}. {c}", label) for c in closers)
            for b in adjs:
                if a != b:
                    out.append((f"The {item} was {a} and {b}.", label))
                    out.append((f"Bought the {item} last week: {a}, just {b}.", label))
    return out


@register("arithmetic", "two-digit addition and subtraction -> the number",
          "Work out the sum or difference. Reply with the number only.")
def _arithmetic() -> list[Pair]:
    out: list[Pair] = []
    for a, b in itertools.product(range(10, 100), repeat=2):
        out.append((f"{a} + {b}", str(a + b)))
        if a >= b:  # keep answers non-negative: one format, no minus signs to learn
            out.append((f"{a} - {b}", str(a - b)))
    return out


@register("geography", "a sentence naming a country or city -> its continent",
          "Name the continent where the place mentioned in the text is located.", list(W.CONTINENT_PLACES))
def _geography() -> list[Pair]:
    # A place appears in several sentences, so train and test share places but never a text:
    # the task tests the place -> continent mapping, not memorised sentences.
    return [(template.format(p=place), continent)
            for continent, places in W.CONTINENT_PLACES.items()
            for place in places for template in W.PLACE_TEMPLATES]


@register("topic", "news headline -> sports, business, science or politics",
          "Classify the topic of the news headline: sports, business, science or politics.",
          ["sports", "business", "science", "politics"])
def _topic() -> list[Pair]:
    s, b, c, p = W.SPORTS, W.BUSINESS, W.SCIENCE, W.POLITICS
    out: list[Pair] = []
    for team, comp in itertools.product(s["team"], s["comp"]):
        out.append((f"{team} win the {comp} after extra time", "sports"))
        out.extend((f"{team} sign {player} ahead of the {comp}", "sports") for player in s["player"])
    for co, move, report in itertools.product(b["company"], b["move"], b["report"]):
        out.append((f"{co} shares {move} after {report}", "business"))
    for co, other in itertools.permutations(b["company"], 2):
        out.append((f"{co} to buy rival {other} in billion-dollar deal", "business"))
    for thing, place in itertools.product(c["thing"], c["place"]):
        out.append((f"Researchers discover new {thing} in {place}", "science"))
        out.extend((f"New {tool} reveals {thing} near {place}", "science") for tool in c["tool"])
    for who, policy in itertools.product(p["official"], p["policy"]):
        out.append((f"{who} unveils new {policy} bill", "politics"))
        out.append((f"{who} wins vote of confidence over {policy} policy", "politics"))
        out.extend((f"{body} rejects {who}'s {policy} proposal", "politics") for body in p["body"])
    return [(_cap(text), label) for text, label in out]


@register("animal_class", "a sentence naming an animal -> mammal, bird, fish or reptile",
          "Which class of animal is mentioned: mammal, bird, fish or reptile?", list(W.ANIMALS))
def _animal_class() -> list[Pair]:
    return [(_cap(template.format(a=animal)), cls)
            for cls, animals in W.ANIMALS.items()
            for animal in animals for template in W.ANIMAL_TEMPLATES]


@register("unit_conversion", "convert a quantity between units -> the number",
          "Convert the quantity to the requested unit. Reply with the number only.")
def _unit_conversion() -> list[Pair]:
    return [(f"Convert {n} {src} to {dst}.", str(n * factor))
            for src, dst, factor in W.UNIT_PAIRS for n in range(2, 61)]
