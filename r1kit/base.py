"""The embedded base checkpoint: the tiny Qwen3-MoE after supervised pre-training on worked
arithmetic, deliberately imperfect so that R1-Zero RL has something to learn.

``build_base`` starts from the random-init tiny policy (``r1kit.tiny``) and fine-tunes it with
``distill.sft`` (the same packed, completion-only trainer distillation uses) on the synthetic
arithmetic family's train split with single-digit operands (``data.max_operand: 9`` in recipes
that start from it), under the R1-Zero prompt. Each completion shows the worked steps
(``r1kit.tasks.arithmetic_steps``) and the result, in one of three styles drawn at random:

- ``r1`` (40%): ``" 7 * 3 = 21, 12 + 21 = 33.</think> <answer>33</answer>"``: the R1 format;
- ``untagged`` (30%): the think block closes but the result has no ``<answer>`` tags;
- ``prose`` (30%): the think block never closes; the result ends a sentence.

Only the first passes the format reward. A fifth of the completions (``SLIP``) carry a careless
slip: the last step's result, and so the answer, off by one (``slipped``), as a real
pre-training corpus holds worked solutions with mistakes. The base therefore answers a problem
right most of the time, but not every time: many of its errors are sampling noise around an
answer it mostly gets right, which is what RL sharpens (DeepSeekMath, section 5.2.2: RL raises
pass@1 and maj@K, pass@K stays flat). Without slips the base's errors were facts it had not
learnt (pass@1 among formatted answers 77% against maj@4 79% at temperature 0.6), which outcome
RL on a few thousand problems cannot teach: it learnt the format and formatted accuracy stayed
put or fell (docs/BENCHMARKS.md, the demo's sweep). RL with the accuracy and format rewards
raises held-out accuracy by settling on the format and by removing the slips; ``make demo``
shows both.

Cached beside the random-init policies as ``{family}-base-seed{seed}-v{BUILD_VERSION}.{BASE_VERSION}``
and built atomically (temporary folder, then rename). ``model.path: tiny:qwen3_moe/base`` names
it in recipes.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

from distill.sft import SFTConfig, SFTExample, train_sft
from r1kit.tasks import arithmetic_steps, arithmetic_tasks
from r1kit.tiny import BUILD_VERSION, build_tiny, default_cache_dir, save_checkpoint
from rollouts.prompts import encode_prompt, r1kit_zero_prompt

BASE_VERSION = 3  # bump when the data or training below change
STYLES = {"r1": 0.4, "untagged": 0.3, "prose": 0.3}
SLIP = 0.2  # share of completions whose last step slips by one (see the docstring)
MAX_OPERAND = 9  # single-digit operands: arithmetic a 1M-parameter model learns in minutes
TRAIN_PROBLEMS = 6000
SFT_STEPS = 600  # about two minutes on 2 CPU cores; more steps leave RL less to do
SFT_LR = 3e-3
ROWS_PER_STEP, ROW_TOKENS = 8, 1024


def slipped(steps: list[str], rng: random.Random) -> tuple[list[str], str]:
    """The worked steps with a careless slip in the last one (its result off by one, up or
    down), and the answer that follows from it.

    >>> slipped(["7 * 3 = 21", "12 + 21 = 33"], random.Random(0))
    (['7 * 3 = 21', '12 + 21 = 34'], '34')
    """
    head, _, result = steps[-1].rpartition(" = ")
    wrong = str(int(result) + rng.choice((-1, 1)))
    return [*steps[:-1], f"{head} = {wrong}"], wrong


def completion(expression: str, answer: str, style: str,
               steps: list[str] | None = None) -> str:
    """A worked completion of the R1-Zero prompt (which ends in ``<think>``) in ``style``.

    >>> completion("2 * 3", "6", "r1")
    ' 2 * 3 = 6.</think> <answer>6</answer>'
    >>> completion("2 * 3", "6", "untagged")
    ' 2 * 3 = 6.</think> The result is 6.'
    >>> completion("2 * 3", "6", "prose")
    ' 2 * 3 = 6, so the result is 6.'
    """
    steps = ", ".join(steps or arithmetic_steps(expression))
    if style == "r1":
        return f" {steps}.</think> <answer>{answer}</answer>"
    if style == "untagged":
        return f" {steps}.</think> The result is {answer}."
    if style == "prose":
        return f" {steps}, so the result is {answer}."
    raise ValueError(f"unknown style {style!r}; expected one of {list(STYLES)}")


def base_examples(tokenizer, seed: int, count: int = TRAIN_PROBLEMS, slip: float = SLIP):
    """SFT examples: R1-Zero prompt -> worked completion (style drawn per problem, a slip in
    the last step with probability ``slip``) + EOS."""

    rng = random.Random(f"base:{seed}")
    names, weights = list(STYLES), list(STYLES.values())
    out = []
    for t in arithmetic_tasks("train", count, seed=seed, max_operand=MAX_OPERAND):
        style = rng.choices(names, weights)[0]
        steps, answer = arithmetic_steps(t.expression), t.answer
        if rng.random() < slip:
            steps, answer = slipped(steps, rng)
        text = completion(t.expression, answer, style, steps)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        out.append(SFTExample(encode_prompt(tokenizer, r1kit_zero_prompt(t.question)), ids))
    return out


def base_path(family: str = "qwen3_moe", seed: int = 0, cache_dir: Path | None = None,
              steps: int = SFT_STEPS, slip: float = SLIP) -> Path:
    short = ("" if steps == SFT_STEPS else f"-{steps}steps") + ("" if slip == SLIP
                                                                else f"-slip{slip:g}")
    name = f"{family}-base{short}-seed{seed}-v{BUILD_VERSION}.{BASE_VERSION}"
    return Path(cache_dir or default_cache_dir()) / name


def build_base(family: str = "qwen3_moe", seed: int = 0, cache_dir: Path | None = None,
               force: bool = False, progress: bool = False, steps: int = SFT_STEPS,
               slip: float = SLIP) -> Path:
    """Build (or reuse) the base checkpoint of ``family`` and return its folder; ``steps``
    other than ``SFT_STEPS`` makes a differently named, weaker base (for quick tests), and
    ``slip`` other than ``SLIP`` a differently named one with that share of slips."""
    import torch
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = base_path(family, seed, cache_dir, steps, slip)
    if out.is_dir() and (out / "model.safetensors").exists() and not force:
        return out
    init = build_tiny(family, seed=seed, cache_dir=cache_dir)
    tokenizer = AutoTokenizer.from_pretrained(init)
    model = AutoModelForCausalLM.from_pretrained(init, dtype=torch.float32)
    examples = base_examples(tokenizer, seed, slip=slip)
    torch.manual_seed(seed)
    start = time.perf_counter()
    with tqdm(total=steps, desc="base: supervised pre-training", unit="step",
              disable=not progress, dynamic_ncols=True) as bar:
        def on_step(step: int, loss: float) -> None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}", refresh=False)

        losses = train_sft(model, examples, SFTConfig(
            steps=steps, lr=SFT_LR, row_tokens=ROW_TOKENS, rows_per_step=ROWS_PER_STEP,
            warmup_steps=min(20, steps // 2), seed=seed), tokenizer.pad_token_id, on_step)
    meta = json.loads((init / "r1kit_tiny.json").read_text())
    meta["base"] = {"version": BASE_VERSION, "styles": STYLES, "slip": slip,
                    "problems": len(examples),
                    "sft_steps": steps, "lr": SFT_LR, "final_loss": losses[-1],
                    "seconds": round(time.perf_counter() - start, 1)}
    return save_checkpoint(model, tokenizer, meta, out)
