"""The agent's rule for URLs a task names (modules/sources/url_policy.py) and the downloader that
applies it to every redirect (modules/sources/downloads.py), against real local HTTP servers."""

from __future__ import annotations

import http.server
import ipaddress
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from mloc_agent.modules.errors import UrlRefused
from mloc_agent.modules.sources.downloads import download
from mloc_agent.modules.sources.url_policy import UrlPolicy, non_public_kind


@pytest.mark.parametrize(("address", "kind"), [
    ("8.8.8.8", None), ("2001:4860:4860::8888", None), ("::ffff:8.8.8.8", None),
    ("127.0.0.1", "loopback"), ("::1", "loopback"), ("::ffff:127.0.0.1", "loopback"), ("::127.0.0.1", "loopback"),
    ("64:ff9b::7f00:1", "loopback"), ("2002:7f00:1::", "loopback"),  # NAT64 and 6to4 of 127.0.0.1
    ("169.254.169.254", "link-local"), ("fe80::1", "link-local"),
    ("10.1.2.3", "private"), ("192.168.0.1", "private"), ("172.16.0.1", "private"), ("fd00::1", "private"),
    ("::ffff:10.0.0.1", "private"), ("224.0.0.1", "multicast"), ("0.0.0.0", "private"),
    ("100.64.0.1", "non-global"),  # carrier-grade NAT: neither private nor public
])
def test_which_addresses_are_public(address: str, kind: str | None) -> None:
    assert non_public_kind(ipaddress.ip_address(address)) == kind


@pytest.mark.parametrize("url", ["http://127.0.0.1/x", "http://localhost:9/x", "http://169.254.169.254/latest/",
                                 "http://[::1]:8000/", "http://10.0.0.8/doc.txt?sig=secret"])
def test_a_private_url_is_refused_naming_the_setting_but_not_the_query(url: str) -> None:
    with pytest.raises(UrlRefused, match="MLOC_ALLOW_PRIVATE_URLS") as refused:
        UrlPolicy().check(url, "hyperparameters.documents")
    assert url.split("?")[0] in str(refused.value) and "secret" not in str(refused.value)
    UrlPolicy(allow_private=True).check(url, "hyperparameters.documents")


@pytest.mark.parametrize("url", ["file://localhost/etc/passwd", "ftp://example.org/x", "http:///nohost", "http://h:99999/"])
def test_only_http_urls_with_a_host_and_a_port_are_fetched(url: str) -> None:
    with pytest.raises(UrlRefused):
        UrlPolicy(allow_private=True).check(url, "dataset.uri")


@pytest.mark.parametrize("url", ["http://127.0.0.1:8123/api/v1/tokens", "http://localhost:8123/",
                                 "http://127.0.0.2:8123/", "http://0.0.0.0:8123/", "http://[::ffff:127.0.0.1]:8123/"])
def test_the_coordinator_is_refused_even_where_private_urls_are_allowed(url: str) -> None:
    policy = UrlPolicy(allow_private=True, coordinator_url="http://127.0.0.1:8123")
    with pytest.raises(UrlRefused, match="coordinator"):
        policy.check(url, "hyperparameters.documents")
    policy.check("http://127.0.0.1:8124/", "hyperparameters.documents")  # another port of the host is not it


class Pages(http.server.BaseHTTPRequestHandler):
    """/doc answers (plain text); /hop redirects to the URL in its query; Host headers are recorded."""

    hosts: list[str] = []

    def do_GET(self) -> None:
        type(self).hosts.append(self.headers["Host"])
        if self.path.startswith("/hop?"):
            self.send_response(302)
            self.send_header("Location", self.path.split("?", 1)[1])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = b"a public page"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def pages() -> Iterator[str]:
    Pages.hosts = []
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), Pages) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        yield f"http://localhost:{server.server_address[1]}"  # a name: the policy resolves it
        server.shutdown()


def test_the_downloader_checks_the_url_before_it_connects(pages: str, tmp_path: Path) -> None:
    with pytest.raises(UrlRefused, match="MLOC_ALLOW_PRIVATE_URLS"):
        download(f"{pages}/doc.txt", tmp_path, urls=UrlPolicy(), what="hyperparameters.documents")
    assert Pages.hosts == []


def test_the_downloader_checks_every_redirect(pages: str, tmp_path: Path) -> None:
    lenient = UrlPolicy(allow_private=True, coordinator_url="http://127.0.0.1:8123")
    got = download(f"{pages}/hop?{pages}/doc", tmp_path, urls=lenient, what="dataset.uri")
    assert got.read_bytes() == b"a public page" and got.suffix == ".txt"  # named by its content type
    assert Pages.hosts == [pages.removeprefix("http://")] * 2  # the name, though it connected to a checked address
    with pytest.raises(UrlRefused, match="coordinator"):
        download(f"{pages}/hop?http://127.0.0.1:8123/api/v1/tokens", tmp_path, urls=lenient, what="dataset.uri")
