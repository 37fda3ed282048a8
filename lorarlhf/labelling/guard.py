"""Refuse requests that do not come from the labelling page itself.

A server on 127.0.0.1 is still reachable from every web page the user has open: another site can send a
form or a fetch() to it (cross-site request forgery), or point a name it controls at 127.0.0.1 (DNS
rebinding). Browsers label every request with where it comes from, so the rules are:

- Host must name this server (a loopback name when it is bound to loopback; this machine's names and
  addresses, or ones the user allows, when it serves the network): defeats DNS rebinding.
- Origin, when sent, must be this server's own origin.
- Sec-Fetch-Site must be same-origin, or none (typed in the address bar); a page may be opened from
  elsewhere (a link, a notebook's iframe), but only as a GET navigation.
- A request that changes anything (POST, PUT, PATCH, DELETE) must prove its origin: browsers always send
  Origin on them, so one without is not from the page.
- Every response says which pages may frame it (Content-Security-Policy: frame-ancestors): a local
  notebook may show the page inline; another site may not frame it and trick clicks into votes.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket

logger = logging.getLogger("lorarlhf.labelling")

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
CHANGING_METHODS = ("POST", "PUT", "PATCH", "DELETE")
# Pages that may show the labelling page in an iframe: local Jupyter and VS Code notebooks. Not http://[::1]:*:
# a CSP host-source is a name or a dotted address (CSP3 "host-part": letters, digits, "-" and "."), so
# browsers reject an IPv6 literal, log an error on every load and ignore it. A notebook opened at
# http://[::1]:PORT cannot be named at all: open it at localhost to see the page inline.
FRAME_ANCESTORS = "'self' http://localhost:* https://localhost:* http://127.0.0.1:* https://127.0.0.1:* vscode-webview:"
COLAB_FRAME_ANCESTORS = "https://colab.research.google.com https://*.googleusercontent.com"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def allowed_hosts(bind: str, extra=()) -> frozenset[str]:
    """The host names a browser may use to reach a server bound to `bind` (without ports, lower case)."""
    names = set(LOOPBACK_NAMES) | {name.lower() for name in extra}
    if is_loopback(bind):
        return frozenset(names)
    if bind not in ("0.0.0.0", "::", ""):
        return frozenset(names | {bind.lower(), f"[{bind.lower()}]"})
    names |= {socket.gethostname().lower(), socket.getfqdn().lower()}
    with contextlib.suppress(OSError):
        names |= {info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None)}
    try:  # the address of the interface that routes outwards; a UDP connect sends nothing
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("10.255.255.255", 1))
            names.add(probe.getsockname()[0])
    except OSError:
        pass
    return frozenset(names)


def refusal(method: str, headers: dict[str, str], *, hosts: frozenset[str] | None) -> str | None:
    """Why this request is refused, or None to let it through. headers: lower-case names; hosts: the
    allowed host names (allowed_hosts), None for any (behind a proxy that already vouches for it)."""
    host = headers.get("host", "")
    name = (host.rsplit(":", 1)[0] if not host.endswith("]") else host).lower()
    if not host or (hosts is not None and name not in hosts and not is_loopback(name)):
        hint = "" if is_loopback_set(hosts) else f"; to allow it: --allow-host {name}"
        return f"Host {host!r} is not a name of this server{hint}"
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


def is_loopback_set(hosts: frozenset[str] | None) -> bool:
    return hosts is not None and all(name in LOOPBACK_NAMES for name in hosts)


class RequestGuard:
    """ASGI middleware: answers 403 with the reason to any request `refusal` rejects, and adds the
    frame-ancestors policy to every response it lets through."""

    def __init__(self, app, hosts: frozenset[str] | None = frozenset(LOOPBACK_NAMES), frame_ancestors=FRAME_ANCESTORS):
        self.app = app
        self.hosts = hosts
        self.policy = f"frame-ancestors {frame_ancestors}".encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers = {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in scope["headers"]}
        method = scope.get("method", "GET") if scope["type"] == "http" else "GET"
        reason = refusal(method, headers, hosts=self.hosts)
        if reason is None:
            return await self.app(scope, receive, self._with_policy(send))
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

    def _with_policy(self, send):
        async def send_with_policy(message):
            if message["type"] == "http.response.start":
                message = {
                    **message,
                    "headers": [*message.get("headers", []), (b"content-security-policy", self.policy)],
                }
            await send(message)

        return send_with_policy
