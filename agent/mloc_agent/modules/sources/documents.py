"""Task inputs for RAG and agents: documents and question lists from paths, folders, globs or URLs.

Stdlib and httpx only. A URL may be any http(s) address the agent can reach, including a presigned
object-store URL or the coordinator's artifact download path of another task
(``<coordinator>/api/v1/tasks/<id>/artifacts/<name>``), which chains one task's output into RAG.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import html.parser
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

TEXT_SUFFIXES = {".txt", ".md", ".markdown", ".rst", ".py", ".log", ".tex", ".yaml", ".yml", ".toml"}
SUFFIXES = TEXT_SUFFIXES | {".html", ".htm", ".json", ".jsonl", ".csv", ".pdf"}
TEXT_KEYS = ("text", "content", "page_content", "document", "body")


class InputError(ValueError):
    """A document or question source that cannot be read: the message names it."""


@dataclass
class SourceDocument:
    text: str
    source: str
    metadata: dict[str, Any] = field(default_factory=dict)


def is_url(ref: str) -> bool:
    return urlparse(ref).scheme in ("http", "https")


def fetch(url: str, dest_dir: Path, timeout_s: float = 60.0) -> Path:
    """Download a URL (following redirects, as artifact downloads do) into ``dest_dir``."""
    import httpx

    dest_dir.mkdir(parents=True, exist_ok=True)
    name = Path(unquote(urlparse(url).path)).name or "download"
    digest = hashlib.sha1(url.encode()).hexdigest()[:8]
    try:
        with httpx.stream("GET", url, follow_redirects=True, timeout=timeout_s) as resp:
            resp.raise_for_status()
            if not Path(name).suffix and "html" in resp.headers.get("content-type", ""):
                name += ".html"
            path = dest_dir / f"{digest}-{name}"
            with open(path, "wb") as fh:
                for chunk in resp.iter_bytes():
                    fh.write(chunk)
    except httpx.HTTPError as exc:
        raise InputError(f"cannot download {url}: {exc}") from exc
    return path


def expand(ref: str, download_dir: Path) -> list[tuple[Path, str]]:
    """One reference -> the files it names, each with the source name users will see."""
    if is_url(ref):
        return [(fetch(ref, download_dir), ref)]
    if any(c in ref for c in "*?["):
        matches = sorted(Path(p) for p in glob.glob(ref, recursive=True) if Path(p).is_file())
        if not matches:
            raise InputError(f"document pattern {ref!r} matches no file on this agent")
        return [(p, str(p)) for p in matches]
    path = Path(ref).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)
        return [(p, str(p)) for p in files]
    if path.is_file():
        return [(path, str(path))]
    raise InputError(f"document {ref!r}: no such file, folder or URL on this agent")


def load_documents(refs: list[str], download_dir: Path) -> list[SourceDocument]:
    docs: list[SourceDocument] = []
    for ref in refs:
        for path, source in expand(ref, download_dir):
            docs.extend(read_file(path, source))
    return [d for d in docs if d.text.strip()]


def read_file(path: Path, source: str) -> list[SourceDocument]:
    """A file -> documents: one per file, or one per row for JSON Lines/JSON/CSV rows."""
    suffix = path.suffix.lower()
    if suffix == ".pdf":
        return [SourceDocument(_pdf_text(path), source, {"type": "pdf"})]
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"document {source}: not UTF-8 text ({exc})") from exc
    if suffix in (".html", ".htm"):
        return [SourceDocument(html_text(text), source, {"type": "html"})]
    if suffix == ".jsonl":
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        return [_row_document(row, f"{source}#{i}") for i, row in enumerate(rows)]
    if suffix == ".json":
        data = json.loads(text)
        rows = data if isinstance(data, list) else [data]
        return [_row_document(row, f"{source}#{i}" if len(rows) > 1 else source) for i, row in enumerate(rows)]
    if suffix == ".csv":
        rows = list(csv.DictReader(io.StringIO(text)))
        return [_row_document(row, f"{source}#{i}") for i, row in enumerate(rows)]
    return [SourceDocument(text, source, {"type": suffix.lstrip(".") or "text"})]


def _row_document(row: Any, source: str) -> SourceDocument:
    if isinstance(row, str):
        return SourceDocument(row, source)
    if not isinstance(row, dict):
        raise InputError(f"{source}: a row must be a string or an object with a 'text' field")
    key = next((k for k in TEXT_KEYS if isinstance(row.get(k), str)), None)
    if key is None:
        raise InputError(f"{source}: no text field (one of {', '.join(TEXT_KEYS)})")
    meta = {k: v for k, v in row.items() if k != key and isinstance(v, (str, int, float, bool))}
    return SourceDocument(row[key], str(row.get("source") or source), meta)


def _pdf_text(path: Path) -> str:
    try:
        from pypdf import PdfReader
    except ImportError as exc:
        raise InputError(f"{path}: reading PDF needs the 'pypdf' package on the agent") from exc
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


def load_questions(inline: list[str] | None, file_ref: str | None, download_dir: Path) -> list[dict[str, Any]]:
    """Questions as ``{"id", "question"}``: inline ones first, then a .txt (a line each) or .jsonl file."""
    out = [{"id": str(i), "question": q} for i, q in enumerate(inline or [])]
    if file_ref:
        path = fetch(file_ref, download_dir) if is_url(file_ref) else Path(file_ref).expanduser()
        if not path.is_file():
            raise InputError(f"questions_file {file_ref!r}: no such file on this agent")
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if path.suffix.lower() == ".jsonl":
            for line in lines:
                row = json.loads(line)
                question = row if isinstance(row, str) else row.get("question") or row.get("prompt")
                if not isinstance(question, str):
                    raise InputError(f"questions_file {file_ref}: each row needs a 'question' string")
                qid = row.get("id") if isinstance(row, dict) else None
                out.append({"id": str(qid if qid is not None else len(out)), "question": question})
        else:
            base = len(out)
            out.extend({"id": str(base + i), "question": q.strip()} for i, q in enumerate(lines))
    return out
