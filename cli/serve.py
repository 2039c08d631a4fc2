"""`simsearch serve`: the HTTP API (and its docs at /docs) over the index, the model loaded once."""

from __future__ import annotations

import ipaddress
import os
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


def serve_command(
    index_dir: IndexOption = None,
    db: DbOption = None,
    host: Annotated[str, typer.Option(help="Address to listen on; anything but loopback needs --token.")]
    = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port.")] = 8000,
    token: Annotated[Optional[str], typer.Option(
        help=f"Bearer token every /api request must carry (default: ${TOKEN_ENV_VAR}).")] = None,
    device: Annotated[Optional[str], typer.Option(help="torch device (default: cuda if available, else cpu).")]
    = None,
    max_in_flight: Annotated[int, typer.Option(min=1, help="Requests handled at once; beyond, 503.")] = 64,
    batch_window_ms: Annotated[float, typer.Option(
        min=0.0, help="How long an upload waits for others to share its model batch.")] = 5.0,
    max_batch: Annotated[int, typer.Option(min=1, help="Uploads embedded in one batch at most.")] = 32,
) -> None:
    """Serve the index over HTTP until interrupted: query, verify, classify, dedup groups, adding and removing
    images."""
    token = token or os.environ.get(TOKEN_ENV_VAR) or None
    if not is_loopback(host) and token is None:
        raise fail(f"listening on {host} (not loopback) needs a token: --token T or ${TOKEN_ENV_VAR}")
    try:
        import uvicorn

        from server.app import Limits, create_app
    except ImportError as exc:
        raise fail(f"the server needs its extra: pip install 'simsearch[server]' ({exc.name} is missing)") from None
    from cli.common import existing_index_dir

    try:
        root = existing_index_dir(index_dir)  # opened once, by the app
        app = create_app(root, db, token, device, Limits(max_in_flight=max_in_flight,
                                                        batch_window=batch_window_ms / 1000, max_batch=max_batch))
    except SimsearchError as exc:
        raise fail(str(exc)) from None
    err.print(f"serving {root} on http://{host}:{port} (API docs at /docs)", soft_wrap=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
