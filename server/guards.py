"""Who may ask: what a web page of another site can make a browser send is refused before any handler runs.

A loopback server is reachable from every page the user visits: a page can post a `<form>`, fetch in `no-cors`
mode or load an `<img>`, all without the browser asking the server first (no CORS preflight), and a page that
rebinds its own DNS name to 127.0.0.1 can even read the answers. Against those, in this order:

- the Host header must name this server (`TrustedHostMiddleware`, set up by `trusted_hosts`): a rebinding page's
  requests carry its own name;
- on /api/, a request a browser marks as coming from another site (`Sec-Fetch-Site: cross-site` or `same-site`)
  or from another origin (an `Origin` header that is not this server's) is refused;
- with a token, every route but the page itself and /api/health needs `Authorization: Bearer <token>` (never a
  URL parameter: URLs end up in logs and Referer headers);
- what remains for the routes to check (`server.bodies`): JSON only as `application/json` (which a browser sends
  cross-site only after a preflight this server never grants), and the header `X-Simsearch-Request` on uploads
  and the expensive duplicate groups (a header no form or `<img>` can carry).

Clients that are not browsers (curl, httpx) send neither `Origin` nor `Sec-Fetch-*`, so these checks cost them
nothing but that header on multipart uploads, thumbnails and duplicate groups.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Iterable
from urllib.parse import urlsplit

from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
OPEN_PATHS = ("/", "/duplicates", "/api/health")
OPEN_PREFIXES = ("/duplicates/", "/static/")
"""What answers without the token: the page at each of its views' URLs and its script and style sheet (static; it
reads the token from its URL's fragment, and a browser's navigation or `<script src>` cannot send a header), and
health."""
REFUSED_SITES = ("cross-site", "same-site")


def trusted_hosts(hosts: Iterable[str]) -> list[str]:
    """The Host names the server answers to: the loopback names and `hosts` (an IPv6 address in brackets, as a
    Host header writes it)."""
    names = list(LOOPBACK_NAMES)
    for host in hosts:
        try:
            name = f"[{host}]" if ipaddress.ip_address(host).version == 6 else host
        except ValueError:
            name = host
        if name.lower() not in names:
            names.append(name.lower())
    return names


def _refused(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """A refusal sent before the body is read: the connection closes after it, so no body is read after it."""
    return JSONResponse({"detail": detail}, status_code=status, headers={"Connection": "close", **(headers or {})})


class CrossSiteGuard:
    """Pure ASGI middleware: refuses cross-site and cross-origin requests to /api/, and, with `token`, requests
    without it (see the module's doc)."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.expected = None if token is None else f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            refusal = self.refusal(scope)
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def refusal(self, scope: Scope) -> JSONResponse | None:
        headers = Headers(scope=scope)
        path: str = scope["path"]
        if path.startswith("/api/"):
            site = headers.get("sec-fetch-site", "").lower()
            if site in REFUSED_SITES:
                return _refused(403, f"refused: a request from another site (Sec-Fetch-Site: {site})")
            origin = headers.get("origin")
            if origin is not None and not _same_origin(origin, headers.get("host", "")):
                return _refused(403, "refused: a request from another origin than this server's")
        if self.expected is not None and not is_open(path):
            given = headers.get("authorization", "").encode()
            if not hmac.compare_digest(given, self.expected):
                return _refused(401, "a bearer token is needed (Authorization: Bearer <token>)",
                                {"WWW-Authenticate": "Bearer"})
        return None


class AnswerHeaders:
    """Pure ASGI middleware: every answer says `X-Content-Type-Options: nosniff` (a JSON answer or an image is
    never read as a script or a page, whatever a browser guesses), and an API answer that says nothing of caching
    (JSON with the index's paths, errors) is `Cache-Control: no-store`: no cache on disk keeps the paths."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        api = scope["path"].startswith("/api/") or scope["path"] == "/openapi.json"

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.setdefault("X-Content-Type-Options", "nosniff")
                if api:
                    headers.setdefault("Cache-Control", "no-store")
            await send(message)

        await self.app(scope, receive, sending)


def is_open(path: str) -> bool:
    """Whether `path` answers without the token (`OPEN_PATHS`, `OPEN_PREFIXES`)."""
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


def _same_origin(origin: str, host: str) -> bool:
    """Whether `origin` (an Origin header) is a page of this server, reached as `host` (the Host header, already
    one the server answers to); "null" (a sandboxed or local page) is not."""
    try:
        parts = urlsplit(origin)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(host) and parts.netloc.lower() == host.lower()
