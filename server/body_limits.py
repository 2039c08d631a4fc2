"""Limits on request bodies, enforced while they arrive, and the cap on requests in flight.

Pure ASGI middleware around the app's `receive`: a body whose Content-Length is over its limit is refused at once
(413, nothing of it read); one that grows past it while streaming (chunked) is cut off there (413); one that
stalls between chunks longer than `stall_seconds` is cut off (408). Each closes the connection, so nothing more
of that body is read.

A request counts against `max_in_flight` only once its body is in (a request without a body, at once): clients
that open uploads and stall hold no place, and the 503 of a full server comes when a request would start work.
A client that hangs up mid-request ends it quietly (no traceback in the log).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from starlette.datastructures import Headers
from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

UNCOUNTED = ("/api/health", "/api/ready")
"""Answered however busy the server is (a load balancer's checks); everything else under /api/ counts."""


@dataclass(frozen=True)
class BodyRules:
    max_json_bytes: int
    """Any body that is not multipart (JSON)."""
    max_form_bytes: int
    """A multipart upload, all its files and fields."""
    stall_seconds: float
    max_in_flight: int


class _Refused(Exception):
    def __init__(self, status: int, detail: str, close: bool) -> None:
        super().__init__(detail)
        self.status, self.detail, self.close = status, detail, close

    def response(self) -> JSONResponse:
        headers = {"Connection": "close"} if self.close else {"Retry-After": "1"}
        return JSONResponse({"detail": self.detail}, status_code=self.status, headers=headers)


def _busy(max_in_flight: int) -> _Refused:
    return _Refused(503, f"busy: {max_in_flight} requests in flight; retry shortly", close=False)


class BodyLimits:
    """The middleware (see the module's doc); `in_flight` is how many requests count now."""

    def __init__(self, app: ASGIApp, rules: BodyRules) -> None:
        self.app = app
        self.rules = rules
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        multipart = headers.get("content-type", "").lower().startswith("multipart/form-data")
        limit = self.rules.max_form_bytes if multipart else self.rules.max_json_bytes
        counts = scope["path"].startswith("/api/") and scope["path"] not in UNCOUNTED
        request = _Request(self, limit, counts)
        started = False

        async def sending(message: Message) -> None:
            nonlocal started
            started = True
            await send(message)

        try:
            request.check_declared(headers)
            await self.app(scope, request.receiving(receive), sending)
        except _Refused as refused:
            if not started:
                await refused.response()(scope, receive, send)
        except ClientDisconnect:
            pass  # nobody is left to answer
        finally:
            request.release()


class _Request:
    """One request's body as it arrives: bytes so far, whether it is all in, whether it holds a place."""

    def __init__(self, limits: BodyLimits, limit: int, counts: bool) -> None:
        self.limits, self.limit, self.counts = limits, limit, counts
        self.received = 0
        self.complete = False
        self.counted = False

    def check_declared(self, headers: Headers) -> None:
        """Refuse a Content-Length over the limit (or not a number); a request without a body is in already."""
        declared = headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                raise _Refused(400, "Content-Length is not a number", close=True)
            if int(declared) > self.limit:
                raise _Refused(413, f"the body ({int(declared):,} bytes) is larger than {self.limit:,} bytes",
                               close=True)
        if "transfer-encoding" not in headers and int(declared or 0) == 0:
            self.body_in()

    def receiving(self, receive: Receive) -> Receive:
        async def receive_within_limits() -> Message:
            if self.complete:
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.limits.rules.stall_seconds)
            except asyncio.TimeoutError:
                raise _Refused(408, f"the body stalled for {self.limits.rules.stall_seconds:g} s",
                               close=True) from None
            if message["type"] == "http.request":
                self.received += len(message.get("body", b""))
                if self.received > self.limit:
                    raise _Refused(413, f"the body is larger than {self.limit:,} bytes", close=True)
                if not message.get("more_body", False):
                    self.body_in()
            return message

        return receive_within_limits

    def body_in(self) -> None:
        """The body is all in: from now on the request counts against the cap (503 when it is full)."""
        self.complete = True
        if self.counts:
            if self.limits.in_flight >= self.limits.rules.max_in_flight:
                raise _busy(self.limits.rules.max_in_flight)
            self.limits.in_flight += 1
            self.counted = True

    def release(self) -> None:
        if self.counted:
            self.limits.in_flight -= 1
            self.counted = False
