"""A real `simsearch serve` on loopback, attacked as a web page the user happens to visit, or a client that sends
too much, too slowly or nothing valid, would attack it: cross-site requests, a foreign Host (DNS rebinding), the
token in a URL, oversized, chunked and stalled bodies, bodies that are not JSON, ids out of range, a client that
hangs up. Two servers for the module: one as `simsearch serve` starts by default (no token), one with a token."""

from __future__ import annotations

import http.client
import io
import json
import select
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx", reason="the test extra is not installed: pip install -e '.[test]'")
pytest.importorskip("uvicorn", reason="the server's extra is not installed: pip install -e '.[server]'")

from conftest import decision_photos, invoke, photo, simsearch_process  # noqa: E402
from postgres_server import free_port  # noqa: E402
from retrieval.index import open_index  # noqa: E402

PROOF = {"X-Simsearch-Request": "1"}
"""What the page, and any client that is not a browser, sends with an upload and the duplicate groups."""
TOKEN = "s3cret"
STALL_SECONDS = 2.0
"""The servers' --body-timeout: a body that stalls longer is cut off."""
IN_FLIGHT = 4
ALLOWED = "photos.example"
"""A name the plain server is told it is reached by (--allow-host), beside the loopback names."""
START_SECONDS = 90


@dataclass
class Server:
    """A `simsearch serve` process over the index at `root / "idx"`, its output in `log`."""

    root: Path
    port: int
    log: Path
    token: str | None
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def request(self, method: str, path: str, headers: dict[str, str] | None = None,
                **options: object) -> httpx.Response:
        sent = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        return httpx.request(method, self.url + path, headers={**sent, **(headers or {})}, timeout=30,
                             **options)  # type: ignore[arg-type]

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=10)

    def head(self, method: str, path: str, headers: dict[str, str]) -> bytes:
        """A request's head as bytes, with this server's Host unless `headers` names another."""
        lines = [f"{method} {path} HTTP/1.1", *(f"{name}: {value}" for name, value in
                                                {"Host": f"127.0.0.1:{self.port}", **headers}.items())]
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def response(sock: socket.socket, timeout: float = 10) -> tuple[int, bytes]:
    """The status and body of the response that comes on `sock` within `timeout` seconds."""
    sock.settimeout(timeout)
    reply = http.client.HTTPResponse(sock)
    reply.begin()
    return reply.status, reply.read()


def upload(fields: dict[str, bytes], data: dict[str, str] | None = None) -> tuple[str, bytes]:
    """(Content-Type, body) of a multipart upload of these files, as a browser or httpx sends it."""
    request = httpx.Request("POST", "http://upload", files={name: (f"{name}.png", content)
                                                             for name, content in fields.items()}, data=data)
    return request.headers["content-type"], request.read()


def png(seed: int) -> bytes:
    buffer = io.BytesIO()
    photo(seed).save(buffer, format="PNG")
    return buffer.getvalue()


def start(root: Path, name: str, *options: str) -> Server:
    port = free_port()
    log = root / f"{name}.log"
    process = simsearch_process("serve", "--index", "idx", "--port", str(port), "--max-in-flight", str(IN_FLIGHT),
                                "--body-timeout", str(STALL_SECONDS), *options, cwd=root, log=log)
    return Server(root, port, log, options[options.index("--token") + 1] if "--token" in options else None, process)


def wait_until_ready(server: Server) -> None:
    deadline = time.monotonic() + START_SECONDS
    while True:
        try:
            if server.request("GET", "/api/ready").status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"the server did not start:\n{server.log_text()}"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory, tiny_model_file: Path) -> Iterator[tuple[Server, Server]]:
    """(plain, guarded): the same index served without a token, and with one; started together."""
    root = tmp_path_factory.mktemp("security")
    decision_photos(root / "p")
    (root / "outside").mkdir()
    photo(40).save(root / "outside" / "elsewhere.png")
    assert invoke("index", "p", "--index", "idx", "--model", str(tiny_model_file), "--workers", "0",
                  cwd=root).exit_code == 0
    plain, guarded = start(root, "plain", "--allow-host", ALLOWED), start(root, "guarded", "--token", TOKEN)
    try:
        for server in (plain, guarded):
            wait_until_ready(server)
        yield plain, guarded
    finally:
        for server in (plain, guarded):
            server.process.send_signal(signal.SIGINT)
        for server in (plain, guarded):
            try:
                server.process.wait(10)
            except subprocess.TimeoutExpired:
                server.process.kill()
                server.process.wait()


@pytest.fixture
def server(servers: tuple[Server, Server]) -> Server:
    return servers[0]


def decided(server: Server) -> tuple[int, int, int]:
    """(keepers chosen, pairs decided apart, images indexed): what a forged request would change."""
    store = open_index(server.root / "idx").store
    return len(store.chosen_keepers()), len(store.distinct_pairs()), store.indexed_count()


# --- cross-site requests (CSRF) -------------------------------------------------------------------------------

CROSS_SITE_FORM = {"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate"}
"""What a browser adds to a <form> posted from another site."""


def test_text_plain_and_cross_site_form_posts_change_nothing(server: Server) -> None:
    photos = server.root / "p"
    before = decided(server)
    forged = [("POST", "/api/keepers", {"path": str(photos / "a-small.png")}),
              ("POST", "/api/decisions", {"a": str(photos / "a.png"), "b": str(photos / "b.png")}),
              ("POST", "/api/images", {"paths": [str(server.root / "outside")]}),
              ("DELETE", "/api/images", {"paths": [str(photos / "a.png")]})]
    for method, path, body in forged:
        text_plain = server.request(method, path, content=json.dumps(body), headers={"Content-Type": "text/plain"})
        assert text_plain.status_code == 415, (path, text_plain.text)
        form = server.request(method, path, content=json.dumps(body), headers={
            "Content-Type": "application/x-www-form-urlencoded", **CROSS_SITE_FORM})
        assert form.status_code == 403, (path, form.text)
        plain_form = server.request(method, path, content=json.dumps(body), headers={
            "Content-Type": "text/plain", **CROSS_SITE_FORM})
        assert plain_form.status_code == 403, (path, plain_form.text)
    assert decided(server) == before, "no forged request recorded a decision or changed the index"
    assert server.request("POST", "/api/query", json={"path": str(photos / "a.png"), "k": 1}).status_code == 200, \
        "JSON from a client that is not a browser still works"


def test_an_upload_needs_the_same_origin_proof(server: Server) -> None:
    image = png(1)
    support = server.root / "support"
    for name, seed in (("red", 0), ("blue", 2)):
        (support / name).mkdir(parents=True, exist_ok=True)
        photo(seed).save(support / name / f"{seed}.png")
    for path, files, data in (("/api/query", {"image": image}, {"k": "2"}),
                              ("/api/verify", {"a": image, "b": image}, {"threshold": "0.1"}),
                              ("/api/classify", {"image": image}, {"support": str(support)})):
        content_type, body = upload(files, data)
        refused = server.request("POST", path, content=body, headers={"Content-Type": content_type})
        assert refused.status_code == 403 and "X-Simsearch-Request" in refused.json()["detail"], (path, refused.text)
        taken = server.request("POST", path, content=body, headers={"Content-Type": content_type, **PROOF})
        assert taken.status_code == 200, (path, taken.text)


def test_a_foreign_origin_is_refused_and_the_servers_own_is_taken(server: Server) -> None:
    body = {"path": str(server.root / "p" / "a.png"), "k": 1}
    for origin in ("http://evil.example", "null", f"http://127.0.0.1:{server.port + 1}",
                   f"http://localhost:{server.port}"):  # localhost is the same host, but another origin than asked
        refused = server.request("POST", "/api/query", json=body, headers={"Origin": origin})
        assert refused.status_code == 403, (origin, refused.text)
    own = server.request("POST", "/api/query", json=body, headers={"Origin": server.url})
    assert own.status_code == 200, own.text


def test_sec_fetch_site_cross_site_and_same_site_are_refused(server: Server) -> None:
    for site, status in (("cross-site", 403), ("same-site", 403), ("same-origin", 200), ("none", 200)):
        answer = server.request("GET", "/api/decisions", headers={"Sec-Fetch-Site": site})
        assert answer.status_code == status, (site, answer.text)


def test_the_duplicate_groups_cannot_be_asked_for_cross_site(server: Server) -> None:
    image_tag = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors", "Sec-Fetch-Dest": "image"}
    assert server.request("GET", "/api/duplicates?threshold=4", headers=image_tag).status_code == 403
    old_browser = server.request("GET", "/api/duplicates?threshold=4")  # an <img> that sends no Sec-Fetch-*
    assert old_browser.status_code == 403 and "X-Simsearch-Request" in old_browser.json()["detail"]
    asked = server.request("GET", "/api/duplicates?threshold=0.05", headers=PROOF)
    assert asked.status_code == 200 and asked.json()["total"] >= 1, asked.text


# --- DNS rebinding and the token ------------------------------------------------------------------------------

def test_a_foreign_host_is_refused_on_every_route(server: Server) -> None:
    routes = ["/", "/docs", "/openapi.json", "/api/health", "/api/duplicates?threshold=4", "/api/thumbnail/1"]
    for path in routes:
        for host in ("evil.example", f"evil.example:{server.port}", f"127.0.0.1.evil.example:{server.port}"):
            answer = server.request("GET", path, headers={"Host": host, **PROOF})
            assert answer.status_code in (400, 421), (path, host, answer.status_code)
            assert str(server.root) not in answer.text
    for host in (f"127.0.0.1:{server.port}", f"localhost:{server.port}", "localhost", f"[::1]:{server.port}",
                 f"{ALLOWED}:{server.port}"):
        assert server.request("GET", "/", headers={"Host": host}).status_code == 200, host


def test_the_token_travels_only_in_the_authorization_header(servers: tuple[Server, Server]) -> None:
    _, guarded = servers
    hit = guarded.request("POST", "/api/query", json={"path": str(guarded.root / "p" / "a.png"), "k": 1})
    image_id = hit.json()["neighbours"][0]["image_id"]
    with httpx.Client(base_url=guarded.url, timeout=30) as bare:  # no Authorization header
        assert bare.get(f"/api/thumbnail/{image_id}", params={"token": TOKEN}, headers=PROOF).status_code == 401
        for path in ("/docs", "/openapi.json", "/redoc"):
            assert bare.get(path).status_code == 401, path
        assert bare.get("/").status_code == 200, "the page holds no data: it reads the token from its URL's #"
        assert bare.get("/api/health").status_code == 200
    assert guarded.request("GET", f"/api/thumbnail/{image_id}", headers=PROOF).status_code == 200
    for path in ("/docs", "/openapi.json"):
        assert guarded.request("GET", path).status_code == 200, path


# --- request bodies -------------------------------------------------------------------------------------------

def test_an_oversized_content_length_is_refused_before_the_body(server: Server) -> None:
    content_type, body = upload({"image": png(2)})
    for path, headers, start in (
            ("/api/query", {"Content-Type": content_type, **PROOF, "Content-Length": "400000000"}, body[:200]),
            ("/api/keepers", {"Content-Type": "application/json", "Content-Length": "300000000"}, b'{"path": "')):
        with server.connect() as sock:
            started = time.monotonic()
            sock.sendall(server.head("POST", path, headers) + start)
            status, body = response(sock, timeout=5)
            assert status == 413 and len(body) < 300, (path, body)
            assert time.monotonic() - started < 3, "answered at once, nothing of the body read"


def test_a_chunked_body_past_the_limit_is_cut_off(server: Server) -> None:
    chunk = b"a" * (64 << 10)
    with server.connect() as sock:
        sock.sendall(server.head("POST", "/api/keepers", {"Content-Type": "application/json",
                                                          "Transfer-Encoding": "chunked"}))
        sent = 0
        try:
            while sent < 64 << 20 and not select.select([sock], [], [], 0)[0]:
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
        except OSError:
            pass  # the server closed the connection: its answer is waiting
        status, body = response(sock)
    assert status == 413 and len(body) < 300, body
    assert sent < 16 << 20, (f"{sent:,} bytes sent before the server stopped reading (its limit: 1 MiB, beside "
                             "what the sockets' buffers hold)")


def test_stalled_bodies_are_cut_off_and_hold_no_place(server: Server) -> None:
    content_type, body = upload({"image": png(3)})
    stalled = []
    for i in range(2 * IN_FLIGHT):
        sock = server.connect()
        path, headers, data = (("/api/query", {"Content-Type": content_type, **PROOF}, body) if i % 2 else
                               ("/api/keepers", {"Content-Type": "application/json"}, b'{"path": "/p/a.png"}'))
        sock.sendall(server.head("POST", path, {**headers, "Content-Length": str(len(data))}) + data[:len(data) // 2])
        stalled.append(sock)
    try:
        time.sleep(0.2)  # every stalled request has reached the server
        answer = server.request("POST", "/api/query", json={"path": str(server.root / "p" / "b.png"), "k": 1})
        assert answer.status_code == 200, answer.text
        assert not select.select(stalled, [], [], 0)[0], "answered while every stalled body was still open"
        for sock in stalled:
            status, detail = response(sock, timeout=STALL_SECONDS + 5)
            assert status == 408 and len(detail) < 300, detail
    finally:
        for sock in stalled:
            sock.close()


def test_bodies_that_are_not_json_and_ids_out_of_range_are_a_four_hundred(server: Server) -> None:
    json_type = {"Content-Type": "application/json"}
    for body in (b'{"path": ', b'{"path": "\xff\xfe"}', b"[" * 100_000, b'\xef\xbb\xbf{"path": "x"}'):
        answer = server.request("POST", "/api/keepers", content=body, headers=json_type)
        assert answer.status_code == 400 and len(answer.text) < 300, (body[:20], answer.text)
    for path, body in (("/api/keepers", {"path": "a\0b"}), ("/api/images", {"paths": ["/" + "a" * 5000]}),
                       ("/api/query", {"path": "/" + "x" * 500_000})):
        answer = server.request("POST", path, json=body)
        assert 400 <= answer.status_code < 500 and len(answer.text) < 1000, (path, answer.text[:200])
    for image_id in ("9223372036854775808", "-1", "99999999"):
        answer = server.request("GET", f"/api/thumbnail/{image_id}", headers=PROOF)
        assert 400 <= answer.status_code < 500, (image_id, answer.text)
    assert "Traceback" not in server.log_text()


def test_a_client_that_hangs_up_mid_body_is_not_a_traceback(server: Server) -> None:
    content_type, body = upload({"image": png(4)})
    for path, headers, data in (("/api/query", {"Content-Type": content_type, **PROOF}, body),
                                ("/api/keepers", {"Content-Type": "application/json"}, b'{"path": "/p/a.png"}')):
        with server.connect() as sock:
            sock.sendall(server.head("POST", path, {**headers, "Content-Length": str(len(data))})
                         + data[:len(data) // 2])
            time.sleep(0.2)
    time.sleep(0.3)
    assert server.request("GET", "/api/health").status_code == 200
    log = server.log_text()
    assert "Traceback" not in log and "Exception in ASGI application" not in log, log
