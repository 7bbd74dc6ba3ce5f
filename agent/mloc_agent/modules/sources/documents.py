"""Task inputs for RAG and agents: documents and question lists from paths, folders, globs or URLs.

Row files (JSON, JSON Lines, CSV) are read by the one row reader, sources/rows.py; URLs are fetched
by sources/downloads.py, if the agent's URL policy lets the task reach them (sources/url_policy.py:
public addresses, never the coordinator). ``task:<id>`` or ``task:<id>/<name or glob>`` names the
artifacts of a finished task of the same user, which the agent fetched before the start
(mloc_agent/sources.py): that chains one task's output into RAG. Stdlib and httpx only.
"""

from __future__ import annotations

import fnmatch
import html.parser
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mloc_shared.chaining import TASK_PREFIX

from mloc_agent.modules.base import TaskContext
from mloc_agent.modules.errors import TaskInputError
from mloc_agent.modules.sources.downloads import download, is_url
from mloc_agent.modules.sources.rows import read_path, read_rows
from mloc_agent.modules.sources.task_outputs import SOURCE_FILE

TEXT_SUFFIXES = {".txt", ".md", ".markdown", ".rst", ".py", ".log", ".tex", ".yaml", ".yml", ".toml"}
# the document types (docs/rag.md); a file of any other type is never read as text: a key, a token or a
# credential file has none of these suffixes
SUFFIXES = TEXT_SUFFIXES | {".html", ".htm", ".json", ".jsonl", ".csv", ".pdf"}
TEXT_KEYS = ("text", "content", "page_content", "document", "body")


@dataclass
class SourceDocument:
    text: str
    source: str
    metadata: dict[str, Any] = field(default_factory=dict)


def expand(ref: str, download_dir: Path, ctx: TaskContext, field: str) -> list[tuple[Path, str]]:
    """One reference -> the files it names, each with the source name users will see. Paths, globs and
    every file of a folder pass the agent's path policy (sources/path_policy.py), URLs its URL policy."""
    if is_url(ref):
        return [(download(ref, download_dir, urls=ctx.urls, what=field), ref)]
    if ref.startswith(TASK_PREFIX):
        return _task_artifacts(ref, ctx)
    if any(c in ref for c in "*?["):
        matches = ctx.paths.glob(ref, field)
        if not matches:
            raise TaskInputError(f"document pattern {ref!r} matches no file on this agent")
        return [(p, str(p)) for p in matches]
    path = ctx.paths.check(ref, field)
    if path.is_dir():
        return [(p, str(p)) for p in ctx.paths.files_in(path, field) if p.suffix.lower() in SUFFIXES]
    if path.is_file():
        return [(path, str(Path(ref).expanduser()))]
    raise TaskInputError(f"document {ref!r}: no such file, folder or URL on this agent")


def _task_artifacts(ref: str, ctx: TaskContext) -> list[tuple[Path, str]]:
    """``task:<id>`` (every artifact) or ``task:<id>/<name or glob>``, from the outputs the agent fetched."""
    task_id, _, pattern = ref[len(TASK_PREFIX):].partition("/")
    folder = ctx.sources_dir / task_id if ctx.sources_dir is not None else None
    if folder is None or not folder.is_dir():
        raise TaskInputError(f"document {ref!r}: the outputs of task {task_id} were not fetched for this task")
    names = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != SOURCE_FILE)
    chosen = [p for p in names if not pattern or fnmatch.fnmatchcase(p.relative_to(folder).as_posix(), pattern)]
    if not chosen:
        wanted = f"artifact matching {pattern!r}" if pattern else "artifacts"
        raise TaskInputError(f"document {ref!r}: task {task_id} left no {wanted}")
    return [(p, f"{TASK_PREFIX}{task_id}/{p.relative_to(folder).as_posix()}") for p in chosen]


def load_documents(refs: list[str], download_dir: Path, ctx: TaskContext,
                   field: str = "hyperparameters.documents") -> list[SourceDocument]:
    docs: list[SourceDocument] = []
    for ref in refs:
        for path, source in expand(ref, download_dir, ctx, field):
            docs.extend(read_file(path, source))
    return [d for d in docs if d.text.strip()]


def read_file(path: Path, source: str) -> list[SourceDocument]:
    """A file -> documents: one per file, or one per row for JSON Lines/JSON/CSV rows."""
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise TaskInputError(f"document {source}: {suffix or 'a file without a suffix'} is not a document type; "
                             f"use {' '.join(sorted(SUFFIXES))}")
    if suffix == ".pdf":
        return [SourceDocument(_pdf_text(path), source, {"type": "pdf"})]
    if suffix in (".jsonl", ".json", ".csv"):
        rows = read_rows(path, where=f"document {source}")
        single = suffix == ".json" and len(rows) == 1
        return [_row_document(row, source if single else f"{source}#{i}") for i, row in enumerate(rows)]
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TaskInputError(f"document {source}: not UTF-8 text ({exc})") from exc
    if suffix in (".html", ".htm"):
        return [SourceDocument(html_text(text), source, {"type": "html"})]
    return [SourceDocument(text, source, {"type": suffix.lstrip(".") or "text"})]


def _row_document(row: Any, source: str) -> SourceDocument:
    if isinstance(row, str):
        return SourceDocument(row, source)
    if not isinstance(row, dict):
        raise TaskInputError(f"{source}: a row must be a string or an object with a 'text' field")
    key = next((k for k in TEXT_KEYS if isinstance(row.get(k), str)), None)
    if key is None:
        raise TaskInputError(f"{source}: no text field (one of {', '.join(TEXT_KEYS)})")
    meta = {k: v for k, v in row.items() if k != key and isinstance(v, (str, int, float, bool))}
    return SourceDocument(row[key], str(row.get("source") or source), meta)


def _pdf_text(path: Path) -> str:
    try:
        from pypdf import PdfReader
    except ImportError as exc:
        raise TaskInputError(f"{path}: reading PDF needs the 'pypdf' package on the agent") from exc
    return "\n\n".join(page.extract_text() or "" for page in PdfReader(str(path)).pages)


class _TextExtractor(html.parser.HTMLParser):
    SKIP = {"script", "style", "head", "noscript", "template"}

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self._skipping = 0

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag in self.SKIP:
            self._skipping += 1
        elif tag in ("p", "br", "div", "li", "h1", "h2", "h3", "h4", "tr", "section"):
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIP and self._skipping:
            self._skipping -= 1

    def handle_data(self, data: str) -> None:
        if not self._skipping:
            self.parts.append(data)


def html_text(markup: str) -> str:
    """Visible text of an HTML page (scripts and styles dropped), blank runs collapsed."""
    parser = _TextExtractor()
    parser.feed(markup)
    text = "".join(parser.parts)
    return re.sub(r"\n\s*\n+", "\n\n", re.sub(r"[ \t]+", " ", text)).strip()


def load_questions(inline: list[str] | None, file_ref: str | None, download_dir: Path,
                   ctx: TaskContext) -> list[dict[str, Any]]:
    """Questions as ``{"id", "question"}``: inline ones first, then a file's (a line each, or rows with a
    ``question`` or ``prompt`` string, as the row reader reads .txt/.jsonl/.json/.csv)."""
    out = [{"id": str(i), "question": q} for i, q in enumerate(inline or [])]
    if file_ref:
        where = "hyperparameters.questions_file"
        if is_url(file_ref):
            path = download(file_ref, download_dir, urls=ctx.urls, what=where)
        else:
            path = ctx.paths.check(file_ref, where)
        if not path.is_file():
            raise TaskInputError(f"questions_file {file_ref!r}: no such file on this agent")
        for row in read_path(path, where=where):
            fields = row if isinstance(row, dict) else {}
            question = row if isinstance(row, str) else fields.get("question") or fields.get("prompt")
            if not isinstance(question, str):
                raise TaskInputError(f"questions_file {file_ref}: each row needs a 'question' string")
            qid = fields.get("id")
            out.append({"id": str(qid if qid is not None else len(out)), "question": question.strip()})
    return out
