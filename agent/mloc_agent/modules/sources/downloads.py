"""The one downloader of task inputs: models, datasets, documents and question files given as
http(s) URLs (a presigned object-store URL, or the coordinator's artifact download path).

A 4xx is final (a wrong or expired URL: the next attempt gets the same answer); no answer, a 429
or a 5xx may pass, so those are retryable. Stdlib and httpx only: the vLLM runtime imports this.
"""

from __future__ import annotations

import hashlib
import tarfile
import zipfile
from pathlib import Path
from urllib.parse import unquote, urlparse

from mloc_agent.modules.errors import TaskInputError, TransientError

TIMEOUT_S = 60.0


def is_url(ref: str) -> bool:
    return urlparse(ref).scheme in ("http", "https")


def _shown(url: str) -> str:
    """The URL without its query: a presigned signature must not land in a task's error."""
    return url.split("?", 1)[0]


def download(url: str, dest: Path, *, unpack: bool = False, what: str = "download") -> Path:
    """Fetch ``url`` into ``dest`` (following redirects, as artifact downloads do); with ``unpack``, a
    tar or zip archive is unpacked and its folder returned."""
    import httpx

    if url.startswith("s3://"):
        raise TaskInputError(f"{what}: {url}: agents hold no object-store credentials; give a presigned https:// URL")
    if not is_url(url):
        raise TaskInputError(f"{what}: {url}: only http(s) URLs can be downloaded")
    dest.mkdir(parents=True, exist_ok=True)
    name = Path(unquote(urlparse(url).path)).name or "download"
    digest = hashlib.sha1(url.encode()).hexdigest()[:8]
    try:
        with httpx.stream("GET", url, follow_redirects=True, timeout=TIMEOUT_S) as resp:
            if resp.status_code == 429 or resp.status_code >= 500:
                raise TransientError(f"{what}: {_shown(url)} answered HTTP {resp.status_code}")
            if resp.status_code != 200:
                raise TaskInputError(f"{what}: {_shown(url)}: download failed with HTTP {resp.status_code}")
            if not Path(name).suffix and "html" in resp.headers.get("content-type", ""):
                name += ".html"
            target = dest / f"{digest}-{name}"
            with open(target, "wb") as fh:
                for chunk in resp.iter_bytes(1 << 20):
                    fh.write(chunk)
    except httpx.HTTPError as exc:  # no answer, or the connection broke mid-body
        raise TransientError(f"{what}: cannot download {_shown(url)}: {type(exc).__name__}: {exc}") from exc
    if not unpack or not (tarfile.is_tarfile(target) or zipfile.is_zipfile(target)):
        return target
    out = dest / f"{digest}-unpacked"
    if tarfile.is_tarfile(target):
        with tarfile.open(target) as tar:
            tar.extractall(out, filter="data")
    else:
        with zipfile.ZipFile(target) as zf:
            zf.extractall(out)
    target.unlink()
    entries = list(out.iterdir())
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else out
