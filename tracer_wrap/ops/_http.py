"""What the sidecar and the gateway check of every request before trusting it: one home for the
token rule, the origin rule, the length of task names and the reading of untrusted JSON.

* **Token rule**: a server that listens beyond loopback must be given a token
  (:func:`require_token_beyond_loopback`); on loopback the token stays optional.
* **Origin rule**: a browser request sent by a page of another origin (``Origin`` not this
  server's own, or ``Sec-Fetch-Site: cross-site``) is refused (:func:`foreign_origin`): a page
  the user merely visits must not be able to log traces or query a router on ``127.0.0.1``.
  Clients that are not browsers send neither header and are not affected.
* **Task names** a request gives (the sidecar's path, the gateway's header): 1 to
  :data:`MAX_TASK_CHARS` characters.
* **JSON**: :func:`read_json` turns any body into a value or a :class:`BadJson` with a message fit
  for the caller: malformed or non-UTF-8 text, nesting deeper than :data:`MAX_DEPTH`, integers
  beyond 64 bits, non-finite numbers, and strings (values or keys) holding a lone surrogate, which
  no store, log or response could encode.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Mapping
from typing import Any

from .. import names
from ..errors import ConfigError

__all__ = ["MAX_DEPTH", "MAX_TASK_CHARS", "BadJson", "check_json_value", "foreign_origin",
           "is_json", "is_loopback", "read_json", "require_token_beyond_loopback"]

#: Deepest nesting of arrays and objects a request body may have.
MAX_DEPTH = 64
#: Longest task name a request may give.
MAX_TASK_CHARS = 200
_INT_LIMIT = 2**63


class BadJson(ValueError):
    """A request body that is not JSON tracer_wrap accepts; the message says why."""


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an IP address, brackets allowed) is this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def require_token_beyond_loopback(host: str, token: str | None, *, server: str,
                                  how: str) -> None:
    """Raise ConfigError when ``server`` would listen on ``host`` beyond loopback without a
    ``token``; ``how`` tells callers how to send it."""
    if not is_loopback(host) and not token:
        raise ConfigError(f"the {server} listens on {host!r}, beyond loopback: give it a token"
                          f" (--token or ${names.ENV_TOKEN}); callers send it {how}")


def is_json(content_type: str | None) -> bool:
    """Whether a ``Content-Type`` header names ``application/json`` (parameters allowed)."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    return media == "application/json"


def foreign_origin(headers: Mapping[str, str], scheme: str) -> str | None:
    """Why a request comes from a web page of another origin (None when it does not): an
    ``Origin`` header other than ``scheme://Host`` of this request, or ``Sec-Fetch-Site:
    cross-site``. Browsers send ``Origin`` with every POST, so a page cannot leave it out."""
    if headers.get("sec-fetch-site", "").strip().lower() == "cross-site":
        return "a cross-site browser request"
    origin = headers.get("origin")
    if origin is None:
        return None
    own = f"{scheme}://{headers.get('host', '')}".lower()
    if origin.strip().lower() != own:
        return f"a browser request from origin {origin[:200]!r}"
    return None


def read_json(body: bytes) -> Any:
    """``body`` decoded as JSON; BadJson (a ValueError) for anything :mod:`this module
    <tracer_wrap.ops._http>` refuses. Never raises anything else."""
    try:
        data = json.loads(body, parse_constant=_reject_constant, parse_float=_finite_float,
                          parse_int=_bounded_int)
    except RecursionError:
        raise BadJson(f"JSON nested deeper than {MAX_DEPTH} levels") from None
    except BadJson:
        raise
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        raise BadJson(f"body is not valid JSON: {exc}") from None
    check_json_value(data)
    return data


def _reject_constant(name: str) -> Any:
    raise BadJson(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if value != value or value in (float("inf"), float("-inf")):
        raise BadJson(f"number {text[:40]} is out of range")
    return value


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > 19:  # checked first: converting a huge digit string is slow
        raise BadJson(f"integer {text[:40]}... is out of range")
    value = int(text)
    if not -_INT_LIMIT <= value < _INT_LIMIT:
        raise BadJson(f"integer {text} is out of range")
    return value


def check_json_value(data: Any) -> None:
    """Raise BadJson when decoded JSON ``data`` nests deeper than :data:`MAX_DEPTH` or holds a
    lone surrogate in a string or a key (walked without recursion)."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, str):
            _check_text(value)
        elif isinstance(value, (list, dict)):
            if depth > MAX_DEPTH:
                raise BadJson(f"JSON nested deeper than {MAX_DEPTH} levels")
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, item in items:
                if isinstance(key, str):
                    _check_text(key)
                stack.append((item, depth + 1))


def _check_text(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise BadJson("a string holds a lone surrogate (\\ud800-\\udfff): not valid Unicode"
                      ) from None
