"""Math suites: MATH-500, GSM8K, AIME 2024, AMC 2023, graded by ``rewards.math``.

A completion is correct when the answer ``rewards.math.grade_one`` extracts from it equals the
gold answer (the accuracy reward's grader, with its time bound); the extracted answer is what
maj@k votes on. The grader is handed ``eval.types.graded_text`` of the completion (by default the
text after ``</think>``), never unfinished reasoning. Defaults follow the usual reporting:
MATH-500 avg@4, GSM8K greedy-style single sample, AIME and AMC avg@16 (30 and 40 problems are too
few for one sample to mean much; the ``r1`` preset draws 64, as the R1 paper does).
"""

from __future__ import annotations

from collections.abc import Sequence

from eval.types import EvalProblem, Grade, Source, Suite
from rewards.math import grade_one
from rewards.math.bounded import POOL_SIZE
from rollouts.prompts import BOXED_INSTRUCTION

CHAT_INSTRUCTION = "\n" + BOXED_INSTRUCTION
"""Appended to math questions in the chat style: the DeepSeek-R1 evaluation instruction."""


def grade_math(problems: Sequence[EvalProblem], completions: Sequence[str]) -> list[Grade]:
    """Grade each completion against its problem's gold answer with the training grader.

    >>> p = EvalProblem("q1", "1 + 1?", "2")
    >>> [g.correct for g in grade_math([p, p], ["so</think> <answer>2</answer>", "\\\\boxed{3}"])]
    [True, False]
    """
    from concurrent.futures import ThreadPoolExecutor

    if len(problems) != len(completions):
        raise ValueError(f"{len(problems)} problems but {len(completions)} completions")

    def one(pair: tuple[EvalProblem, str]) -> Grade:
        p, c = pair
        if not isinstance(c, str):
            return Grade(False, None, "not text")
        v = grade_one(c, str(p.gold))
        return Grade(v.correct, v.extracted, v.reason)

    # Threads: the symbolic stage runs in helper processes (up to POOL_SIZE at once), so pairs
    # that reach it are decided in parallel while the cheap stages run in this process.
    with ThreadPoolExecutor(max_workers=POOL_SIZE) as pool:
        return list(pool.map(one, zip(problems, completions)))


def _number_text(value) -> str:
    """A gold answer as text; AMC's floats such as ``27.0`` become ``27``.

    >>> _number_text(27.0), _number_text("025"), _number_text(-1.5)
    ('27', '025', '-1.5')
    """
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _math500(rows: list[dict]) -> list[EvalProblem]:
    return [EvalProblem(r["unique_id"], r["problem"], r["answer"], r["solution"],
                        {"subject": r.get("subject"), "level": r.get("level")}) for r in rows]


def _competition(prefix: str):
    def to_problems(rows: list[dict]) -> list[EvalProblem]:
        problems = []
        for i, r in enumerate(rows):
            question = r.get("problem") or r.get("question")
            answer = _number_text(r["answer"])
            problems.append(EvalProblem(f"{prefix}-{r.get('id', i)}", question, answer,
                                        f"The answer is $\\boxed{{{answer}}}$.",
                                        {"url": r.get("url")}))
        return problems
    return to_problems


def gsm8k_gold(answer: str) -> str:
    """The number after GSM8K's ``####``, thousands separators dropped.

    >>> gsm8k_gold("She pays 2 * 3 = <<2*3=6>>6.\\n#### 1,006")
    '1006'
    """
    return answer.rsplit("####", 1)[1].strip().replace(",", "")


def _gsm8k(rows: list[dict]) -> list[EvalProblem]:
    return [EvalProblem(f"gsm8k-{i}", r["question"], gsm8k_gold(r["answer"]), r["answer"])
            for i, r in enumerate(rows)]


# The 8 chain-of-thought exemplars of Wei et al. (2022), "Chain-of-Thought Prompting Elicits
# Reasoning in Large Language Models", Table 20: the standard few-shot GSM8K prompt (written by
# the authors, not drawn from the dataset).
GSM8K_EXEMPLARS = (
    ("There are 15 trees in the grove. Grove workers will plant trees in the grove today. After "
     "they are done, there will be 21 trees. How many trees did the grove workers plant today?",
     "There are 15 trees originally. Then there were 21 trees after some more were planted. So "
     "there must have been 21 - 15 = 6. The answer is 6."),
    ("If there are 3 cars in the parking lot and 2 more cars arrive, how many cars are in the "
     "parking lot?",
     "There are originally 3 cars. 2 more cars arrive. 3 + 2 = 5. The answer is 5."),
    ("Leah had 32 chocolates and her sister had 42. If they ate 35, how many pieces do they have "
     "left in total?",
     "Originally, Leah had 32 chocolates. Her sister had 42. So in total they had 32 + 42 = 74. "
     "After eating 35, they had 74 - 35 = 39. The answer is 39."),
    ("Jason had 20 lollipops. He gave Denny some lollipops. Now Jason has 12 lollipops. How many "
     "lollipops did Jason give to Denny?",
     "Jason started with 20 lollipops. Then he had 12 after giving some to Denny. So he gave "
     "Denny 20 - 12 = 8. The answer is 8."),
    ("Shawn has five toys. For Christmas, he got two toys each from his mom and dad. How many "
     "toys does he have now?",
     "Shawn started with 5 toys. If he got 2 toys each from his mom and dad, then that is 4 more "
     "toys. 5 + 4 = 9. The answer is 9."),
    ("There were nine computers in the server room. Five more computers were installed each day, "
     "from monday to thursday. How many computers are now in the server room?",
     "There were originally 9 computers. For each of 4 days, 5 more computers were added. So 5 * "
     "4 = 20 computers were added. 9 + 20 is 29. The answer is 29."),
    ("Michael had 58 golf balls. On tuesday, he lost 23 golf balls. On wednesday, he lost 2 more. "
     "How many golf balls did he have at the end of wednesday?",
     "Michael started with 58 golf balls. After losing 23 on tuesday, he had 58 - 23 = 35. After "
     "losing 2 more, he had 35 - 2 = 33 golf balls. The answer is 33."),
    ("Olivia has $23. She bought five bagels for $3 each. How much money does she have left?",
     "Olivia had 23 dollars. 5 bagels for 3 dollars each will be 5 x 3 = 15 dollars. So she has "
     "23 - 15 dollars left. 23 - 15 is 8. The answer is 8."),
)


def gsm8k_few_shot(problem: EvalProblem) -> str:
    """The 8-shot chain-of-thought prompt; the model's "The answer is N." is what is graded.

    >>> gsm8k_few_shot(EvalProblem("x", "What is 2 + 2?", "4")).endswith("Q: What is 2 + 2?\\nA:")
    True
    """
    shots = "".join(f"Q: {q}\nA: {a}\n\n" for q, a in GSM8K_EXEMPLARS)
    return f"{shots}Q: {problem.question}\nA:"


MATH_SUITES: dict[str, Suite] = {
    "math500": Suite(
        "math500", "math", Source("HuggingFaceH4/MATH-500", "test", local="math500/test.jsonl"),
        _math500, grade_math, ks=(1, 4), n=4, instruction=CHAT_INSTRUCTION),
    "gsm8k": Suite(
        "gsm8k", "math", Source("openai/gsm8k", "test", "main", local="gsm8k/test.jsonl"),
        _gsm8k, grade_math, few_shot=gsm8k_few_shot, few_shot_stop=("\n\nQ:", "\nQ:"),
        ks=(1,), n=1, max_tokens=1024, instruction=CHAT_INSTRUCTION),
    "aime24": Suite(
        "aime24", "math", Source("HuggingFaceH4/aime_2024", "train", local="aime24/test.jsonl"),
        _competition("aime24"), grade_math, ks=(1, 8, 16), n=16, max_tokens=8192,
        instruction=CHAT_INSTRUCTION),
    "amc23": Suite(
        "amc23", "math", Source("math-ai/amc23", "test", local="amc23/test.jsonl"),
        _competition("amc23"), grade_math, ks=(1, 8, 16), n=16, max_tokens=8192,
        instruction=CHAT_INSTRUCTION),
}
