"""How a task module's failure becomes the task's error (modules/errors.py failure_of): one line,
a code, and whether another attempt may succeed. The exceptions are the real ones, raised."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from mloc_agent.modules.errors import (
    MAX_MESSAGE,
    DatasetError,
    Failure,
    TaskInputError,
    TransientError,
    failure_of,
)


def raised(make: Callable[[], None]) -> BaseException:
    try:
        make()
    except Exception as exc:
        return exc
    raise AssertionError("nothing raised")


def reraised_while_handling() -> None:
    try:
        raise TaskInputError("dataset.path: /x does not exist")
    except TaskInputError:
        {}["oops"]  # a bug in the handler is not an input error


def wrapped_input_error() -> None:
    try:
        raise DatasetError("dataset.columns: the data has no column 'q'")
    except DatasetError as exc:
        raise RuntimeError("training failed") from exc


def raise_(exc: BaseException) -> Callable[[], None]:
    def make() -> None:
        raise exc

    return make


@pytest.mark.parametrize(("make", "expected"), [
    (raise_(TaskInputError("model.source: /m does not exist")),
     Failure("model.source: /m does not exist", "bad_input", False)),
    (raise_(DatasetError("dataset.rows is empty")), Failure("dataset.rows is empty", "bad_dataset", False)),
    (raise_(TransientError("dataset.uri: answered HTTP 503")),
     Failure("dataset.uri: answered HTTP 503", "transient", True)),
    (wrapped_input_error, Failure("dataset.columns: the data has no column 'q'", "bad_dataset", False)),
    (reraised_while_handling, Failure("KeyError: 'oops'", "task_failed", True)),
    (raise_(ValueError("first line\n  detail\nmore")), Failure("ValueError: first line", "task_failed", True)),
    (raise_(RuntimeError()), Failure("RuntimeError", "task_failed", True)),
])
def test_a_failure_is_one_line_with_a_code(make: Callable[[], None], expected: Failure) -> None:
    assert failure_of(raised(make)) == expected


def test_a_long_message_is_cut() -> None:
    error = failure_of(TaskInputError("x" * 5000)).error
    assert len(error) == MAX_MESSAGE and error.endswith("…")


def test_the_hubs_own_errors_inside_an_oserror_name_the_cause_and_the_fix() -> None:
    errors = pytest.importorskip("huggingface_hub.errors")

    def transformers_style() -> None:
        try:
            raise errors.LocalEntryNotFoundError("Cannot find the requested files in the disk cache")
        except errors.LocalEntryNotFoundError as exc:
            raise OSError("We couldn't connect to 'https://huggingface.co' to load the files") from exc

    failure = failure_of(raised(transformers_style))
    assert failure.error_code == "hub_unreachable" and failure.retryable is False
    assert "cannot reach the Hugging Face Hub" in failure.error and "type: local" in failure.error
