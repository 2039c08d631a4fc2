"""Database URLs and driver messages as output may show them: never a password, wherever it sits.

A PostgreSQL URL can carry a secret in its userinfo (`user:password@`) and in its query (`?password=`, and
libpq's other secret keys: `sslpassword`, `oauth_client_secret`, ...); SQLAlchemy's `hide_password` masks only
the first. A driver's message may quote the connection string. Everything that puts a URL or such a message in
an error or a report goes through here.
"""

from __future__ import annotations

import re
from urllib.parse import quote_plus

from sqlalchemy.engine import URL
from sqlalchemy.exc import DatabaseError, OperationalError

MASK = "***"
_SECRET_KEY = re.compile(r"pass|secret|token", re.IGNORECASE)
"""A query key or connection-string keyword naming a secret (password, sslpassword, passfile, oauth_client_secret)."""
_KEYWORD_VALUE = re.compile(r"""\b(\w*(?:pass|secret|token)\w*)(\s*=\s*)('(?:[^'\\]|\\.)*'|"[^"]*"|[^\s&;,]+)""",
                            re.IGNORECASE)
_USERINFO = re.compile(r"(://[^\s/:@]*):[^\s/@]*@")


def shown_url(url: URL) -> str:
    """`url` as a message may show it: its password and every secret query value masked."""
    pairs = [(key, value) for key, values in url.query.items()
             for value in (values if isinstance(values, tuple) else (values,))]
    query = "&".join(f"{quote_plus(key)}={MASK if _SECRET_KEY.search(key) else quote_plus(value)}"
                     for key, value in pairs)
    bare = url.set(query={}).render_as_string(hide_password=True)
    return f"{bare}?{query}" if query else bare


def scrubbed(text: str, url: URL | None = None) -> str:
    """`text` with every secret of `url` masked, and anything shaped like one (`password=...`, `user:secret@`)."""
    for secret in _secrets(url):
        text = text.replace(secret, MASK).replace(quote_plus(secret), MASK)
    text = _USERINFO.sub(rf"\1:{MASK}@", text)
    return _KEYWORD_VALUE.sub(rf"\1\2{MASK}", text)


def first_line(exc: OperationalError | DatabaseError, url: URL | None = None) -> str:
    """The driver's message, first line only (psycopg adds hints on further lines), scrubbed of secrets."""
    lines = [line.strip() for line in str(exc.orig).splitlines() if line.strip()]
    return scrubbed(lines[0], url) if lines else type(exc.orig).__name__


def _secrets(url: URL | None) -> list[str]:
    if url is None:
        return []
    found = [url.password] if url.password else []
    for key, values in url.query.items():
        if _SECRET_KEY.search(key):
            found += [value for value in (values if isinstance(values, tuple) else (values,)) if value]
    return sorted(map(str, found), key=len, reverse=True)  # the longest first: one may hold another
