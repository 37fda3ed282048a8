"""Refuse requests that do not come from the labelling page itself.

A server on 127.0.0.1 is still reachable from every web page the user has open: another site can send a
form or a fetch() to it (cross-site request forgery), or point a name it controls at 127.0.0.1 (DNS
rebinding). Browsers label every request with where it comes from, so the rules are:

- Host must name this server (a loopback name when it is bound to loopback): defeats DNS rebinding.
- Origin, when sent, must be this server's own origin.
- Sec-Fetch-Site must be same-origin, or none (typed in the address bar); a page may be opened from
  elsewhere (a link, a notebook's iframe), but only as a GET navigation.
- A request that changes anything (POST, PUT, PATCH, DELETE) must prove its origin: browsers always send
  Origin on them, so one without is not from the page.
"""

from __future__ import annotations

import ipaddress
import logging

logger = logging.getLogger("lorarlhf.labelling")

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
CHANGING_METHODS = ("POST", "PUT", "PATCH", "DELETE")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def refusal(method: str, headers: dict[str, str], *, loopback_only: bool) -> str | None:
    """Why this request is refused, or None to let it through. headers: lower-case names."""
    host = headers.get("host", "")
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    if not host or (loopback_only and name not in LOOPBACK_NAMES and not is_loopback(name)):
        return f"Host {host!r} is not this server"
    origin = headers.get("origin")
    if origin is not None and origin not in (f"http://{host}", f"https://{host}"):
        return f"Origin {origin!r} is not this page"
    site, mode = headers.get("sec-fetch-site"), headers.get("sec-fetch-mode")
    navigation = method in ("GET", "HEAD") and mode == "navigate"
    if site not in (None, "same-origin", "none") and not navigation:
        return f"a {site} request ({mode or 'unknown mode'}) did not come from this page"
    if method in CHANGING_METHODS and origin is None and site != "same-origin":
        return f"{method} without an Origin did not come from this page"
    return None


class RequestGuard:
    """ASGI middleware: answers 403 with the reason to any request `refusal` rejects."""

    def __init__(self, app, loopback_only: bool = True):
        self.app = app
        self.loopback_only = loopback_only

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers = {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in scope["headers"]}
        method = scope.get("method", "GET") if scope["type"] == "http" else "GET"
        reason = refusal(method, headers, loopback_only=self.loopback_only)
        if reason is None:
            return await self.app(scope, receive, send)
        logger.warning("refused %s %s: %s", method, scope.get("path", ""), reason)
        if scope["type"] == "websocket":
            return await send({"type": "websocket.close", "code": 1008})
        body = f"refused: {reason}\n".encode()
        await send(
            {
                "type": "http.response.start",
                "status": 403,
                "headers": [
                    (b"content-type", b"text/plain; charset=utf-8"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
