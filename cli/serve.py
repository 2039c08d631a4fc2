"""`simsearch serve`: the HTTP API (and its docs at /docs) over the index, the model loaded once.

It answers only requests addressed to a loopback name, the `--host` it listens on, or a name given by
`--allow-host` (a page that rebinds its own DNS name to this address is refused); listening on every address
(0.0.0.0, ::) therefore needs the names clients will use.

The page's "resolve" moves a group's others to the trash or under the quarantine folder, which is the server's to
choose (`--quarantine DIR`, default: `quarantine/` in the index directory), never the page's."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from cli.common import DbOption, IndexOption, err, fail
from retrieval.errors import SimsearchError

TOKEN_ENV_VAR = "SIMSEARCH_TOKEN"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_every_address(host: str) -> bool:
    """Whether `host` listens on every address (0.0.0.0, ::): no Host header names it."""
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return host == ""


def serve_command(
    index_dir: IndexOption = None,
    db: DbOption = None,
    host: Annotated[str, typer.Option(help="Address to listen on; anything but loopback needs --token.")]
    = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port.")] = 8000,
    token: Annotated[Optional[str], typer.Option(
        help=f"Bearer token every request but the page and /api/health must carry, as the header "
             f"'Authorization: Bearer T' (default: ${TOKEN_ENV_VAR}).")] = None,
    device: Annotated[Optional[str], typer.Option(help="torch device (default: cuda if available, else cpu).")]
    = None,
    max_in_flight: Annotated[int, typer.Option(min=1, help="Requests handled at once; beyond, 503.")] = 64,
    batch_window_ms: Annotated[float, typer.Option(
        min=0.0, help="How long an upload waits for others to share its model batch.")] = 5.0,
    max_batch: Annotated[int, typer.Option(min=1, help="Uploads embedded in one batch at most.")] = 32,
    allow_host: Annotated[Optional[list[str]], typer.Option(
        help="Another name (or address) clients reach the server by, answered beside loopback and --host; "
             "repeatable. Requests naming any other host are refused.")] = None,
    body_timeout: Annotated[float, typer.Option(
        min=0.1, help="Seconds a request body may send nothing before it is cut off (408).")] = 5.0,
    quarantine: Annotated[Optional[Path], typer.Option(
        metavar="DIR", help="Where the page's \"resolve\" moves a group's others, one folder per resolve with its "
                            "manifest for `simsearch undo` (default: quarantine/ in the index directory, which "
                            "indexing never scans).")] = None,
) -> None:
    """Serve the index over HTTP until interrupted: query, verify, classify, dedup groups, adding and removing
    images."""
    token = token or os.environ.get(TOKEN_ENV_VAR) or None
    if not is_loopback(host) and token is None:
        raise fail(f"listening on {host} (not loopback) needs a token: --token T or ${TOKEN_ENV_VAR}")
    hosts = list(allow_host or [])
    if is_every_address(host) and not hosts:
        raise fail(f"listening on {host or 'every address'} needs the names clients will use: --allow-host NAME "
                   "(repeatable), such as this machine's name or address")
    try:
        import uvicorn

        from server.app import Limits, create_app
    except ImportError as exc:
        raise fail(f"the server needs its extra: pip install 'simsearch[server]' ({exc.name} is missing)") from None
    from cli.common import existing_index_dir

    try:
        root = existing_index_dir(index_dir)  # opened once, by the app
        limits = Limits(max_in_flight=max_in_flight, batch_window=batch_window_ms / 1000, max_batch=max_batch,
                        body_stall_seconds=body_timeout)
        app = create_app(root, db, token, device, limits, hosts=hosts if is_every_address(host) else [host, *hosts],
                         quarantine=None if quarantine is None else quarantine.expanduser().absolute())
    except SimsearchError as exc:
        raise fail(str(exc)) from None
    moved_to = quarantine.expanduser().absolute() if quarantine is not None else root / "quarantine"
    err.print(f"serving {root} on http://{host}:{port} (API docs at /docs); the page's resolve moves files under "
              f"{moved_to} or to the trash", soft_wrap=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
