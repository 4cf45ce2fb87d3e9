"""[eval] stop_when: the comparisons a recipe writes, what they refuse, and when they hold."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bifamily.config import InvalidValue
from bifamily.evaluation.config import EvalConfig
from bifamily.evaluation.metrics import target_problems
from bifamily.evaluation.stop_when import Target, all_met, parse_targets


class Judge:
    directions = {"judge_recognisable_ratio": "max", "judge_coverage": "max", "judge_fd": "min"}


def test_comparisons_read_with_spaces_exponents_and_blank_parts():
    assert parse_targets(" judge_recognisable_ratio>=0.8 ,judge_fd <= 1e2, ") == (
        Target("judge_recognisable_ratio", ">=", 0.8), Target("judge_fd", "<=", 100.0),
    )
    assert parse_targets("") == ()


@pytest.mark.parametrize(("text", "message"), [
    ("judge_fd < 10", "'judge_fd < 10' is not 'VALUE_NAME >= NUMBER'"),
    ("judge_fd <= ten", "'judge_fd <= ten' is not"),
    ("judge_fd <= nan", "'judge_fd <= nan' is not"),
    ("judge_fd <= 1 2", "'judge_fd <= 1 2' is not"),
    (">= 0.5", "'>= 0.5' is not"),
    ("judge_fd <= 10, judge_fd <= 5", "judge_fd named more than once"),
])
def test_an_unreadable_comparison_is_refused_naming_the_key_and_the_part(text, message):
    with pytest.raises(InvalidValue) as raised:
        EvalConfig(stop_when=text)
    assert raised.value.field == "stop_when" and message in str(raised.value)


def test_each_comparison_must_name_a_scheduled_value_the_way_it_improves():
    targets = parse_targets("judge_coverage >= 0.9, judge_fd >= 30, nope <= 1")
    assert target_problems(targets, {"judge": Judge()}) == [
        "$.eval.stop_when: judge_fd is better lower: write 'judge_fd <= 30'",
        "$.eval.stop_when: 'nope' is not a value of the metrics in $.eval.metrics "
        "(they report: judge_coverage, judge_fd, judge_recognisable_ratio)",
    ]
    assert target_problems(parse_targets("judge_fd <= 30"), {"judge": Judge()}) == []


finite = st.floats(-1e6, 1e6, allow_nan=False)


@given(finite, finite, finite, finite)
def test_the_targets_hold_exactly_when_every_value_has_reached_its_own(ratio, ratio_target, fd, fd_target):
    targets = (Target("judge_recognisable_ratio", ">=", ratio_target), Target("judge_fd", "<=", fd_target))
    values = {"judge_recognisable_ratio": ratio, "judge_fd": fd, "judge_coverage": 0.0}
    assert all_met(targets, values) == (ratio >= ratio_target and fd <= fd_target)


def test_a_target_met_exactly_counts_as_reached():
    assert all_met(parse_targets("judge_coverage >= 0.9"), {"judge_coverage": 0.9})
    assert not all_met(parse_targets("judge_coverage >= 0.9"), {"judge_coverage": 0.8999})
