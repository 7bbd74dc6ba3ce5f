"""What a task's final metrics are and which hyperparameters tell tasks apart (mloc_shared/comparison.py):
pure functions of task records, checked on tables of cases."""

from __future__ import annotations

import math

import pytest
from mloc_shared.comparison import compare, differing, final_metrics, flatten, format_table


@pytest.mark.parametrize(("record", "expected"), [
    ({}, {}),
    ({"progress": {"step": 3, "total": 9, "loss": 1.5, "eta_s": 4.0}}, {"loss": 1.5}),  # step, ETA: no metrics
    ({"progress": {"loss": math.nan, "learning_rate": 1e-4, "metrics": {"kl": 0.1, "ok": True, "s": "x"}}},
     {"learning_rate": 1e-4, "kl": 0.1}),  # NaN, booleans and text are left out
    ({"progress": {"loss": 2.0, "metrics": {"perplexity": 9.0}}, "result": {"metrics": {"perplexity": 7.5, "em": 1}}},
     {"loss": 2.0, "perplexity": 7.5, "em": 1.0}),  # the result's metrics win
    ({"progress": None, "result": {"exit_code": 0}}, {}),
])
def test_final_metrics(record: dict, expected: dict) -> None:
    assert final_metrics(record) == expected


def test_differing_counts_a_missing_path_as_a_value_and_shows_everything_for_one_task() -> None:
    rows = [flatten({"lr": 1e-4, "optim": {"beta": 0.9}, "tags": [1, 2]}),
            flatten({"lr": 1e-4, "optim": {"beta": 0.95}, "tags": [1, 2], "warmup": 10})]
    assert differing(rows) == ["optim.beta", "warmup"]
    assert differing(rows[:1]) == ["lr", "optim.beta", "tags"]
    assert differing([]) == []


def test_table_puts_progress_metrics_first_and_aligns_numbers_right() -> None:
    records = [{"id": "a", "name": "short", "task_type": "sft", "state": "succeeded",
                "progress": {"step": 100, "loss": 0.5}, "result": {"metrics": {"bleu": 31.25}},
                "spec": {"hyperparameters": {"learning_rate": 1e-4}}},
               {"id": "b", "name": None, "task_type": "sft", "state": "failed", "progress": {"step": 7, "loss": 2.25},
                "spec": {"hyperparameters": {"learning_rate": 3e-4}}}]
    table = compare(records)
    assert table["metrics"] == ["loss", "bleu"] and table["hyperparameters"] == ["learning_rate"]
    header, first, second = format_table(table).splitlines()
    assert header.split() == ["task", "type", "state", "step", "learning_rate", "loss", "bleu"]
    assert second.split() == ["b", "sft", "failed", "7", "0.0003", "2.25", "-"]  # no name: the id
    assert first.endswith("31.25") and second.endswith("    -")  # right-aligned under "bleu"
    assert first.index("100") + 3 == second.index("7") + 1 == header.index("step") + 4
