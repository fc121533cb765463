"""Seeded GSM8K-style word problems (question / answer ending in `#### N`) for the embedded demo.

Why: data with nothing downloaded where, as in GSM8K solutions, many tokens are predictable from the question
(names, objects and quantities restated in fixed phrasings; only the arithmetic results are new). Each problem
chains 2-4 steps (start, then add / remove / multiply / share) over one running quantity; results stay in 1..99
and products use one-digit factors, so a tiny model learns the arithmetic in minutes.
Usage: python -m mtp_ds.demo.synth_gsm outputs/demo/data --train 20000 --test 200 --seed 0
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

from mtp_ds.fileio import atomic_writer

NAMES = [
    "Mia",
    "Leo",
    "Ava",
    "Noah",
    "Emma",
    "Liam",
    "Zoe",
    "Omar",
    "Nina",
    "Ravi",
    "Lucy",
    "Ben",
    "Sara",
    "Tom",
    "Ella",
    "Max",
    "Lily",
    "Sam",
    "Ruby",
    "Jack",
    "Anna",
    "Eli",
    "Maya",
    "Owen",
    "Ivy",
    "Luke",
    "Rosa",
    "Finn",
    "Hana",
    "Adam",
    "Lena",
    "Kai",
    "Jade",
    "Hugo",
    "Cora",
    "Nico",
    "Tara",
    "Alex",
    "Dina",
    "Paul",
]
OBJECTS = [
    "apples",
    "pencils",
    "stickers",
    "marbles",
    "books",
    "cookies",
    "cards",
    "shells",
    "coins",
    "toys",
    "beads",
    "stamps",
    "eggs",
    "flowers",
    "balloons",
    "crayons",
    "buttons",
    "candies",
    "rocks",
    "ribbons",
]
CONTAINERS = ["boxes", "bags", "jars", "packs", "baskets", "crates", "cups", "trays"]


def _start(rng: random.Random, name: str, obj: str) -> tuple[str, str, int]:
    """(question sentence(s), solution sentence, quantity) of the first step."""
    if rng.random() < 0.5:
        count = rng.randint(5, 60)
        verb = rng.choice(("has", "collected", "found", "bought"))
        return f"{name} {verb} {count} {obj}.", f"{name} starts with {count} {obj}.", count
    boxes, each = rng.randint(2, 9), rng.randint(2, 9)
    container = rng.choice(CONTAINERS)
    total = boxes * each
    question = f"{name} has {boxes} {container} of {obj}. Each of the {container} holds {each} {obj}."
    return (
        question,
        f"{name} has {boxes} {container} with {each} {obj} each, so {boxes} * {each} = {total} {obj}.",
        total,
    )


def _no_carry(a: int, b: int) -> bool:
    return a % 10 + b % 10 < 10 and a + b <= 99


def _no_borrow(a: int, b: int) -> bool:
    return a % 10 >= b % 10 and a - b >= 1


def _step(rng: random.Random, name: str, obj: str, have: int) -> tuple[str, str, int] | None:
    """One more step on the running quantity `have`; None when the chosen kind has no valid numbers."""
    kind = rng.choice(("add", "remove", "times", "share", "add_groups"))
    if kind == "add":
        choices = [more for more in range(2, 41) if _no_carry(have, more)]
        if not choices:
            return None
        more = rng.choice(choices)
        verb, past = rng.choice((("buys", "buying"), ("finds", "finding"), ("gets", "getting"), ("wins", "winning")))
        return (
            f"Then {name} {verb} {more} more {obj}.",
            f"After {past} {more} more, {name} has {have} + {more} = {have + more} {obj}.",
            have + more,
        )
    if kind == "remove":
        choices = [less for less in range(1, have) if _no_borrow(have, less)]
        if not choices:
            return None
        less = rng.choice(choices)
        verb, past = rng.choice(
            (("gives away", "giving away"), ("loses", "losing"), ("sells", "selling"), ("uses", "using"))
        )
        return (
            f"Then {name} {verb} {less} {obj}.",
            f"After {past} {less}, {name} has {have} - {less} = {have - less} {obj}.",
            have - less,
        )
    if kind == "times":
        if not 2 <= have <= 9:
            return None
        factor = rng.randint(2, min(9, 99 // have))
        return (
            f"Then {name} makes the number of {obj} {factor} times as large.",
            f"{factor} times as many is {have} * {factor} = {have * factor} {obj}.",
            have * factor,
        )
    if kind == "share":
        choices = [n for n in range(2, 10) if have % n == 0 and 2 <= have // n <= 9]
        if not choices:
            return None
        parts = rng.choice(choices)
        return (
            f"Then {name} splits the {obj} into {parts} equal groups and keeps one group.",
            f"In {parts} equal groups, each group has {have} / {parts} = {have // parts} {obj}.",
            have // parts,
        )
    choices = [(boxes, each) for boxes in range(2, 10) for each in range(2, 10) if _no_carry(have, boxes * each)]
    if not choices:
        return None
    boxes, each = rng.choice(choices)
    container = rng.choice(CONTAINERS)
    added = boxes * each
    return (
        f"Then {name} gets {boxes} {container} with {each} {obj} in each.",
        f"{name} gets {boxes} * {each} = {added} more {obj}, so {have} + {added} = {have + added} {obj}.",
        have + added,
    )


def make_problem(rng: random.Random) -> dict:
    """One problem in the GSM8K schema: {"question", "answer"} with the answer ending in `#### N`."""
    name, obj = rng.choice(NAMES), rng.choice(OBJECTS)
    question, solution, have = _start(rng, name, obj)
    questions, solutions = [question], [solution]
    sentences = rng.randint(2, 4)  # the start and 1-3 more steps: 1-5 arithmetic operations in all
    while len(solutions) < sentences:
        step = _step(rng, name, obj, have)
        if step is None:
            continue
        questions.append(step[0])
        solutions.append(step[1])
        have = step[2]
    ask = rng.choice((f"How many {obj} does {name} have now?", f"How many {obj} does {name} have in the end?"))
    return {"question": " ".join([*questions, ask]), "answer": " ".join(solutions) + f"\n#### {have}"}


def make_split(count: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [make_problem(rng) for _ in range(count)]


def write_splits(out_dir: str | Path, *, train: int, test: int, seed: int = 0) -> dict[str, Path]:
    """train.jsonl and test.jsonl in `out_dir`; test questions never occur in train."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    test_rows = make_split(test, seed + 1)
    seen = {row["question"] for row in test_rows}
    train_rows, rng = [], random.Random(seed)
    while len(train_rows) < train:
        row = make_problem(rng)
        if row["question"] not in seen:
            train_rows.append(row)
    paths = {}
    for split, rows in (("train", train_rows), ("test", test_rows)):
        paths[split] = out_dir / f"{split}.jsonl"
        with atomic_writer(paths[split]) as handle:
            handle.writelines(json.dumps(row) + "\n" for row in rows)
    return paths


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out_dir")
    parser.add_argument("--train", type=int, default=20000)
    parser.add_argument("--test", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for split, path in write_splits(args.out_dir, train=args.train, test=args.test, seed=args.seed).items():
        print(f"{split}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
