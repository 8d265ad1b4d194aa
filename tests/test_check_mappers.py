"""The real-model self-check of the mappers (evaluation/check.py)."""

from __future__ import annotations

import math

from csla_core import load_pipeline
from csla_core.evaluation.check import CHECKS, check_mappers, format_checks
from csla_core.weights import read_reference_direction


def test_shipped_directions_are_unit_w_vectors():
    for _, name in CHECKS:
        direction = read_reference_direction(name)
        assert direction.shape == (512,) and math.isclose(
            float(direction.norm()), 1.0, rel_tol=1e-5
        )


def test_check_runs_on_random_weights_and_says_it_means_nothing():
    pipe = load_pipeline(random_weights=True, device="cpu", size=32, tiny_clip=True)
    checks = check_mappers(pipe)
    assert [c.prompt for c in checks] == ["smiling", "an old person"]
    assert all(-1.0 <= c.cosine <= 1.0 for c in checks)
    assert "means nothing" in format_checks(checks, random_weights=True)


def test_check_compares_the_w_change_with_the_matching_direction(monkeypatch):
    pipe = load_pipeline(random_weights=True, device="cpu", size=32, tiny_clip=True)
    smile, age = read_reference_direction("smile"), read_reference_direction("age")

    class Moved:  # an edit that moves every W+ row along the smile direction
        def __init__(self, wplus):
            self.wplus = wplus + 0.7 * smile

    monkeypatch.setattr(pipe, "edit", lambda wplus, prompt, **_: Moved(wplus))
    by_prompt = {c.prompt: c.cosine for c in check_mappers(pipe)}
    assert math.isclose(by_prompt["smiling"], 1.0, rel_tol=1e-5)
    assert math.isclose(by_prompt["an old person"], float(smile @ age), abs_tol=1e-5)
    assert "chance level" in format_checks(check_mappers(pipe), random_weights=False)
