"""``make demo`` run again: after its inputs change (here a base built for another number of
steps, as a newer base or another cache folder gives another base folder) the old run is moved
aside and the demo starts afresh; with nothing changed it resumes."""

from __future__ import annotations

import pytest

from tests.test_cli import r1kit

SHORT = ["demo", "recipes/tiny_r1_zero.yaml", "train.steps=1", "train.save_every=0",
         "train.prompts_per_step=2", "rollout.n=2", "train.sample_every=0"]
FLAGS = ["--heldout", "4", "-n", "1", "--no-progress"]


@pytest.mark.slow
def test_demo_rerun_after_its_base_changed_starts_afresh_and_keeps_the_old_run(tmp_path):
    out, cache = tmp_path / "demo", tmp_path / "cache"
    first = r1kit(*SHORT, f"log.out_dir={out}", *FLAGS, "--base-steps", "4", cache=cache)
    assert first.returncode == 0, first.stderr[-3000:]
    again = r1kit(*SHORT, f"log.out_dir={out}", *FLAGS, "--base-steps", "5", cache=cache)
    assert again.returncode == 0, again.stderr[-3000:]
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("demo.old-")]
    assert len(aside) == 1 and (aside[0] / "eval_before" / "summary.json").is_file()
    assert f"moved it to {aside[0]}" in again.stderr and "model.path" in again.stderr
    assert "base-5steps" in (out / "eval_before" / "settings.json").read_text()
    # nothing changed: resumes, moves nothing
    third = r1kit(*SHORT, f"log.out_dir={out}", *FLAGS, "--base-steps", "5", cache=cache)
    assert third.returncode == 0, third.stderr[-3000:]
    assert len([p for p in tmp_path.iterdir() if p.name.startswith("demo.old-")]) == 1
    assert "moved it to" not in third.stderr
