"""Seeded toy arithmetic word problems in the MetaMathQA schema (query, response, original_question, type).

Why: the CPU recipe (`recipes/tiny_cpu.yaml` reads tests/fixtures/toy_metamath.jsonl, written by this file)
and the tests need a real-looking math SFT set without downloading anything. Test-only, so it lives here.
Every word is in `mtp_ds.models.tiny.TINY_WORDS` (numbers are split into digits by the word tokenizer), so
`word_tokenizer()` encodes the rows with no <unk>. Like MetaMathQA, each original question comes with a few
augmentations (same question with a reworded answer, or a reworded question) that share `original_question`,
which is what the seed-question-stratified split groups on.

    python tests/toy_math.py tests/fixtures/toy_metamath.jsonl --questions 120 --seed 0
"""

from __future__ import annotations

import json
import random
import sys


def _problem(rng: random.Random) -> tuple[list[str], list[str], int]:
    """(question phrasings, step-by-step solutions without the final line, answer)."""
    kind = rng.randrange(5)
    a, b, c = rng.randint(2, 12), rng.randint(2, 12), rng.randint(1, 30)
    if kind == 0:
        t = a * b
        questions = [
            f"there are {a} boxes . each of the boxes has {b} apples . how many apples are there ?",
            f"{a} boxes have {b} apples each . what is the total of apples ?",
        ]
        steps = [
            f"there are {a} boxes with {b} apples each . so there are {a} * {b} = {t} apples .",
            f"each of the {a} boxes has {b} apples . {a} * {b} = {t} .",
        ]
    elif kind == 1:
        t = a + c
        questions = [
            f"we have {a} coins . we buys {c} more coins . how many coins do we have ?",
            f"if we had {a} coins and buys {c} more , how many coins are there ?",
        ]
        steps = [f"we have {a} + {c} = {t} coins .", f"{a} coins and {c} more is {a} + {c} = {t} ."]
    elif kind == 2:
        a = a + c
        t = a - c
        questions = [
            f"we had {a} pens and gives {c} pens to them . how many pens are left ?",
            f"there were {a} pens . we gives {c} pens to them . how many pens are left ?",
        ]
        steps = [f"{a} - {c} = {t} pens are left .", f"we had {a} pens . {a} - {c} = {t} ."]
    elif kind == 3:
        ab = a * b
        t = ab + c
        questions = [
            f"we have {a} boxes of {b} books and {c} more books . what is the total of books ?",
            f"there are {c} books and {a} boxes with {b} books each . how many books are there ?",
        ]
        steps = [
            f"{a} * {b} = {ab} books are in the boxes . then {ab} + {c} = {t} books .",
            f"{a} * {b} = {ab} . then {ab} + {c} = {t} .",
        ]
    else:
        t = b
        total = a * b
        questions = [
            f"{total} apples were in {a} boxes . each of the boxes has as many . how many apples are in each ?",
            f"{a} boxes have {total} apples in all . how many apples does each of the boxes have ?",
        ]
        steps = [f"{total} / {a} = {t} apples are in each of the boxes .", f"we can do {total} / {a} = {t} ."]
    return questions, steps, t


def generate_rows(num_questions: int = 120, seed: int = 0) -> list[dict]:
    """MetaMathQA-style rows: per original question 1 to 3 rows (GSM_AnsAug / GSM_Rephrased)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(num_questions):
        questions, steps, answer = _problem(rng)
        original = questions[0]
        variants = [
            ("GSM_AnsAug", original, steps[0]),
            ("GSM_AnsAug", original, "let's think step by step . " + steps[1]),
            ("GSM_Rephrased", questions[1], steps[0]),
        ]
        for kind, query, solution in rng.sample(variants, rng.randint(1, 3)):
            rows.append(
                {
                    "query": query,
                    "response": f"{solution} the answer is : {answer}",
                    "original_question": original,
                    "type": kind,
                }
            )
    return rows


def write_jsonl(path: str, rows: list[dict]) -> None:
    with open(path, "w") as file:
        for row in rows:
            file.write(json.dumps(row) + "\n")


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out")
    parser.add_argument("--questions", type=int, default=120)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    write_jsonl(args.out, generate_rows(args.questions, args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
