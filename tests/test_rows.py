"""The one row reader (modules/sources/rows.py): the same file means the same rows to training,
inference, RAG and agent tasks. Real files in a temporary folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from mloc_agent.modules.errors import DatasetError, failure_of
from mloc_agent.modules.sources.rows import read_path, read_rows

ROWS = [{"prompt": "a", "answer": "1"}, {"prompt": "b", "answer": "2"}]


@pytest.mark.parametrize(("name", "text", "rows"), [
    ("list.json", json.dumps(ROWS), ROWS),
    ("held.json", json.dumps({"rows": ROWS}), ROWS),
    ("data.json", json.dumps({"data": ROWS, "version": 2}), ROWS),
    ("prompts.json", json.dumps({"prompts": ["x", "y"]}), ["x", "y"]),
    ("one.json", json.dumps(ROWS[0]), [ROWS[0]]),
    ("lines.json", "\n".join(json.dumps(r) for r in ROWS), ROWS),  # JSON Lines in a .json file
    ("pretty.json", json.dumps(ROWS[0], indent=2), [ROWS[0]]),  # one object over several lines
    ("rows.jsonl", "\n".join(json.dumps(r) for r in ROWS) + "\n\n", ROWS),
    ("list.jsonl", json.dumps(ROWS), ROWS),
    ("rows.csv", "prompt,answer\na,1\nb,2\n", ROWS),
    ("lines.txt", "first\n\nsecond\n", ["first", "second"]),
])
def test_each_format_reads_to_the_same_rows(tmp_path: Path, name: str, text: str, rows: list[Any]) -> None:
    (tmp_path / name).write_text(text)
    assert read_rows(tmp_path / name) == rows


def test_parquet_reads_as_objects(tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / "rows.parquet")
    assert read_rows(tmp_path / "rows.parquet") == ROWS


def test_a_folder_reads_every_row_file_in_name_order(tmp_path: Path) -> None:
    (tmp_path / "b.jsonl").write_text(json.dumps(ROWS[1]))
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.txt").write_text("third")
    (tmp_path / "a.json").write_text(json.dumps([ROWS[0]]))
    (tmp_path / "notes.md").write_text("not rows")
    assert read_path(tmp_path) == [ROWS[0], ROWS[1], "third"]


def test_an_unknown_suffix_is_refused_unless_the_caller_reads_it_as_lines(tmp_path: Path) -> None:
    path = tmp_path / "prompts.md"
    path.write_text("one\ntwo\n")
    with pytest.raises(DatasetError, match=r"cannot read 'prompts\.md'"):
        read_rows(path)
    assert read_rows(path, default="txt") == ["one", "two"]
    data = tmp_path / "export.data"
    data.write_text("\n".join(json.dumps(r) for r in ROWS))
    assert read_rows(data, "jsonl") == ROWS  # dataset.file_format overrides the suffix


@pytest.mark.parametrize(("name", "content", "words"), [
    ("bad.jsonl", b'{"a": 1}\n{"a": \n', "dataset.path: line 2 is not JSON"),
    ("bad.json", b'[{"a": 1},', "dataset.path: not valid JSON"),
    ("latin1.txt", "caf\u00e9".encode("latin-1"), "latin1.txt is not UTF-8 text"),
])
def test_an_unreadable_file_is_an_input_error_naming_the_field(tmp_path: Path, name: str, content: bytes,
                                                              words: str) -> None:
    (tmp_path / name).write_bytes(content)
    with pytest.raises(DatasetError) as caught:
        read_rows(tmp_path / name)
    failure = failure_of(caught.value)
    assert words in failure.error and "\n" not in failure.error
    assert failure.error_code == "bad_dataset" and failure.retryable is False


def test_a_missing_path_names_it(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as caught:
        read_path(tmp_path / "none")
    assert str(caught.value) == f"dataset.path: {tmp_path / 'none'} does not exist on this agent"
