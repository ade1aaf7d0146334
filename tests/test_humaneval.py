"""Every HumanEval canonical solution passes in the sandbox; every `pass` body fails."""

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from rewards.code import HumanEvalProblem, load_humaneval, run_function_tests

HUMANEVAL = Path(__file__).parents[2] / "shared" / "data" / "humaneval" / "HumanEval.jsonl.gz"


def grade(problem: HumanEvalProblem) -> tuple[str, bool, bool]:
    def passes(completion: str) -> bool:
        return run_function_tests(problem.prompt, completion, problem.test, problem.entry_point,
                                  isolation="bwrap").all_passed

    return problem.task_id, passes(problem.canonical_solution), passes("    pass\n")


@pytest.mark.slow
def test_canonical_solutions_pass_and_empty_bodies_fail():
    problems = load_humaneval(HUMANEVAL)
    assert len(problems) == 164
    with ThreadPoolExecutor(max_workers=2) as pool:
        graded = list(pool.map(grade, problems))
    assert [task for task, canonical, _ in graded if not canonical] == []
    assert [task for task, _, empty in graded if empty] == []
