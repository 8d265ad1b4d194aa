"""The automatic strength search on gain curves of known shape (no models)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from csla_core.editing.strength import parse_strength, search_strength
from csla_core.errors import InvalidSettingError


def power_gain(scale: float, power: float):
    """An odd gain curve scale * sign(s) * |s|^power, as edits give for small strengths."""
    return lambda s: scale * math.copysign(abs(s) ** power, s)


@settings(max_examples=200, deadline=None)
@given(scale=st.floats(0.005, 0.05), power=st.floats(0.3, 3.0), fraction=st.floats(0.01, 0.97))
def test_reachable_targets_are_met_within_tolerance_in_eight_renders(scale, power, fraction):
    target = fraction * scale * 3.0**power  # reachable within the default range of 3
    search = search_strength(power_gain(scale, power), target)
    assert search.reached
    assert abs(search.gain - target) <= 0.05 * target  # the search's DEFAULT_TOLERANCE
    assert search.renders <= 8 and len(search.tried) == search.renders
    assert 0 < search.strength <= 3.0
    assert search.gain == pytest.approx(power_gain(scale, power)(search.strength))  # same call


def test_negative_target_gives_a_negative_strength():
    search = search_strength(power_gain(0.03, 1.0), -0.02)
    assert search.reached and search.strength < 0
    assert search.strength == pytest.approx(-2 / 3, rel=0.05)  # linear gain: 5% in gain, 5% here


def test_unreachable_target_reports_the_range_limit():
    def saturating(s: float) -> float:
        return 0.02 * math.tanh(s)

    search = search_strength(saturating, 0.04)
    assert not search.reached
    assert search.strength == 3.0 and search.gain == pytest.approx(saturating(3.0))
    assert "could not reach" in search.describe() and "+-3" in search.describe()


def test_first_crossing_of_a_gain_that_falls_again():
    search = search_strength(lambda s: 0.05 * math.sin(s), 0.04)
    assert search.reached and search.strength < math.pi / 2  # the rising side


def test_zero_target_needs_no_render_and_strength_parsing():
    search = search_strength(lambda s: pytest.fail("rendered"), 0.0)
    assert search.strength == 0.0 and search.renders == 0 and search.reached
    assert parse_strength("auto") == "auto" and parse_strength(" AUTO ") == "auto"
    assert parse_strength("-0.5") == -0.5
    for word in ("strong", "nan", "inf", "-inf"):  # the message every front end gives
        with pytest.raises(InvalidSettingError, match="strength must be a finite number"):
            parse_strength(word)


def test_photo_edit_command_accepts_auto_strength(tmp_path, capsys):
    from csla_core import cli

    missing = str(tmp_path / "missing.jpg")
    # "auto" parses (the command then stops at the missing photo, before loading any model) ...
    assert (
        cli.main(["edit", missing, "smiling", "--strength", "auto", "--target-clip-gain", "0.03"])
        == 2
    )
    assert "does not exist" in capsys.readouterr().err
    # ... while a word (or NaN) that is not a strength is refused, with the service's message.
    for word in ("strong", "nan"):
        assert cli.main(["edit", missing, "smiling", "--strength", word]) == 2
        err = capsys.readouterr().err
        assert f"error: The strength must be a finite number, got '{word}'." in err
