"""The summary: the exit code an error means, and how a cost is shown."""

from __future__ import annotations

import pytest

from pipeline.errors import OutputError
from pipeline.summary import EXIT_PART_WAY, EXIT_USAGE, Summary, usd


@pytest.mark.parametrize(
    ("cost", "shown"),
    [
        (0.0, "$0.0000"),
        (3.9e-05, "$0.000039"),
        (0.00012, "$0.00012"),
        (0.0653, "$0.0653"),
        (0.006, "$0.0060"),
        (1.23456, "$1.2346"),
    ],
)
def test_a_cost_is_shown_down_to_its_first_two_digits(cost: float, shown: str) -> None:
    assert usd(cost) == shown


@pytest.mark.parametrize(
    ("spent", "code"),
    [
        ({}, EXIT_USAGE),
        ({"requests_sent": 1}, EXIT_PART_WAY),
        ({"batch_submitted": 3}, EXIT_PART_WAY),
        ({"batch_collected": 3}, EXIT_PART_WAY),
        ({"batches": [{"id": "b", "state": "completed", "completed": 3}]}, EXIT_PART_WAY),
        ({"batches": [{"id": "b", "state": "in_progress", "completed": 0}]}, EXIT_USAGE),
    ],
)
def test_an_error_after_sending_online_or_in_batches_exits_5(
    spent: dict[str, object], code: int
) -> None:
    summary = Summary()
    for name, value in spent.items():
        setattr(summary, name, value)
    summary.fail(OutputError("the output cannot be written"))
    assert summary.exit_code == code
