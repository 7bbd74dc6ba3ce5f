"""The one downloader of task inputs: models, datasets, documents and question files given as
http(s) URLs (a presigned object-store URL, say).

Every URL, and every redirect it takes, passes the agent's URL policy first (sources/url_policy.py),
and the request goes to an address the policy checked (the name kept for TLS and the Host header).
A 4xx is final (a wrong or expired URL: the next attempt gets the same answer); no answer, a 429
or a 5xx may pass, so those are retryable. Stdlib and httpx only: the vLLM runtime imports this.
"""

from __future__ import annotations

import contextlib
import hashlib
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urljoin, urlparse

from mloc_agent.modules.errors import TaskInputError, TransientError
from mloc_agent.modules.sources.url_policy import Address, UrlPolicy, shown_url

TIMEOUT_S = 60.0
MAX_REDIRECTS = 10
# a file named by its URL without a suffix (or a page) is named by what the server says it is, so the
# readers know its type; they read no file of an unknown type as text
SUFFIX_OF_TYPE = {"text/plain": ".txt", "text/markdown": ".md", "text/html": ".html",
                  "application/xhtml+xml": ".html", "text/csv": ".csv",
                  "application/json": ".json", "application/x-ndjson": ".jsonl", "application/jsonl": ".jsonl",
                  "application/pdf": ".pdf"}


def is_url(ref: str) -> bool:
    return urlparse(ref).scheme in ("http", "https")


@contextlib.contextmanager
def _get(client: Any, url: str, addresses: list[Address]) -> Iterator[Any]:
    """GET ``url`` from the first of ``addresses`` that answers, as the resolver's order would; the
    URL's own host name stays in the Host header and in TLS (SNI and the certificate check)."""
    import httpx

    target = httpx.URL(url)
    host = target.host
    header = host if target.port is None else f"{host}:{target.port}"
    for i, ip in enumerate(addresses):
        request = client.build_request("GET", target.copy_with(host=str(ip)), headers={"Host": header},
                                       extensions={"sni_hostname": host})
        try:
            resp = client.send(request, stream=True)
        except httpx.ConnectError:
            if i == len(addresses) - 1:
                raise
            continue
        try:
            yield resp
        finally:
            resp.close()
        return


def download(url: str, dest: Path, *, urls: UrlPolicy, unpack: bool = False, what: str = "download") -> Path:
    """Fetch ``url`` into ``dest``, following redirects, each one checked by ``urls``; with ``unpack``, a
    tar or zip archive is unpacked and its folder returned."""
    import httpx

    if url.startswith("s3://"):
        raise TaskInputError(f"{what}: {url}: agents hold no object-store credentials; give a presigned https:// URL")
    if not is_url(url):
        raise TaskInputError(f"{what}: {url}: only http(s) URLs can be downloaded")
    dest.mkdir(parents=True, exist_ok=True)
    name = Path(unquote(urlparse(url).path)).name or "download"
    digest = hashlib.sha1(url.encode()).hexdigest()[:8]
    current = url
    try:
        with httpx.Client(timeout=TIMEOUT_S, follow_redirects=False) as client:
            for _ in range(MAX_REDIRECTS + 1):
                with _get(client, current, urls.check(current, what)) as resp:
                    if resp.is_redirect and "location" in resp.headers:
                        current = urljoin(current, resp.headers["location"])
                        continue
                    target = _save(resp, dest / f"{digest}-{name}", url, what)
                    break
            else:
                raise TaskInputError(f"{what}: {shown_url(url)} redirects more than {MAX_REDIRECTS} times")
    except httpx.HTTPError as exc:  # no answer, or the connection broke mid-body
        raise TransientError(f"{what}: cannot download {shown_url(url)}: {type(exc).__name__}: {exc}") from exc
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


def _save(resp: Any, target: Path, url: str, what: str) -> Path:
    """The final answer's body into ``target``, its suffix from the content type when the URL gave none
    (or the answer is a page: ``article.php`` that is HTML is read as HTML)."""
    if resp.status_code == 429 or resp.status_code >= 500:
        raise TransientError(f"{what}: {shown_url(url)} answered HTTP {resp.status_code}")
    if resp.status_code != 200:
        raise TaskInputError(f"{what}: {shown_url(url)}: download failed with HTTP {resp.status_code}")
    suffix = SUFFIX_OF_TYPE.get(resp.headers.get("content-type", "").split(";")[0].strip().lower())
    if suffix and target.suffix.lower() != suffix and (not target.suffix or suffix == ".html"):
        target = target.with_name(target.name + suffix)
    with open(target, "wb") as fh:
        for chunk in resp.iter_bytes(1 << 20):
            fh.write(chunk)
    return target
