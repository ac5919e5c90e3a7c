"""Where a webhook may go: one strict parser for callback URLs, the allow-list, and the
address rule — used both to check a URL when a job is submitted and to send to it.

The check and the send must read a URL the same way: ``http://127.0.0.2:18081\\@127.0.0.1/x``
is host 127.0.0.1 to ``urllib.parse`` and host 127.0.0.2 to ``requests``. So nothing is
left to a second parser:

- **Form.** ``http(s)://host[:port][/path][?query]`` in printable ASCII: no backslash, no
  user info (``@``), no whitespace or control characters. The host is a DNS name (letters,
  digits, hyphens; the last label not all digits) or an IP literal in its canonical
  spelling (``127.0.0.1``, ``[::1]``): ``2130706433``, ``0x7f.1``, ``127.1`` and
  ``0177.0.0.1`` — which the C resolver reads as 127.0.0.1 — are refused.
- **Allow-list** (``AURUM_WEBHOOK_ALLOWED_HOSTS``): exact host and port. An entry
  ``host:port`` allows that port; a bare ``host`` allows the scheme's default port only
  (80 for http, 443 for https).
- **Addresses.** The host is resolved once, at delivery, and the POST connects to the
  address that was checked (no second lookup between check and send). An address that is
  not globally routable — loopback, private, link-local (169.254.169.254, the cloud
  metadata service), shared, reserved, multicast — is refused unless that exact address
  is itself an entry of the allow-list. One refused address among a name's addresses
  refuses the name.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from aurum_ml.errors import InvalidRequest, Reason

__all__ = ["AllowList", "Callback", "Refused", "parse_allow_list", "parse_callback"]

MAX_URL = 2048
DEFAULT_PORT = {"http": 80, "https": 443}
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_AUTHORITY = re.compile(r"^(?P<host>\[[0-9a-f:.]+\]|[a-z0-9.-]+)(?::(?P<port>[0-9]{1,5}))?$")
_TARGET_CHARS = re.compile(r"^[\x21-\x7e]*$")  # printable ASCII, no space


class Refused(InvalidRequest):
    """A callback URL or address this server will not send to."""

    def __init__(self, message: str, reason: Reason = "callback_not_allowed") -> None:
        super().__init__(message, reason)


@dataclass(frozen=True)
class Callback:
    """A callback URL as it is checked and sent: ``host`` is a lower-case DNS name or an
    IP literal (IPv6 without brackets), ``port`` explicit or the scheme's default,
    ``target`` the path and query sent in the request line."""

    scheme: str
    host: str
    port: int
    target: str

    @property
    def ip(self) -> IpAddress | None:
        """The host as an address when it is an IP literal."""
        try:
            return ipaddress.ip_address(self.host)
        except ValueError:
            return None

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == DEFAULT_PORT[self.scheme] else f"{host}:{self.port}"


def _host(text: str) -> str:
    """A host as written in a URL or allow-list entry → its canonical form, or Refused."""
    if text.startswith("["):
        try:
            address = ipaddress.IPv6Address(text[1:-1])
        except ValueError:
            raise Refused("callback_url's host is not a valid IPv6 address") from None
        return str(address)
    labels = text.split(".")
    if len(text) > 253 or not all(labels):
        raise Refused("callback_url's host is not a valid DNS name or IP address")
    if labels[-1].isdigit() or any(label.startswith("0x") for label in labels):
        try:  # numeric: only the canonical dotted quad (no 2130706433, 0x7f.1, 127.1, 0177…)
            return str(ipaddress.IPv4Address(text))
        except ValueError:
            raise Refused("callback_url's host is a non-canonical IP address") from None
    if not all(_LABEL.match(label) for label in labels):
        raise Refused("callback_url's host is not a valid DNS name or IP address")
    return text


def _authority(text: str) -> tuple[str, int | None]:
    match = _AUTHORITY.match(text.lower())
    if match is None:
        raise Refused("callback_url's host[:port] is not of the form host, host:port or [v6]")
    port = match.group("port")
    if port is not None and not 0 < int(port) < 65536:
        raise Refused("callback_url has an invalid port")
    return _host(match.group("host")), None if port is None else int(port)


def parse_callback(url: str) -> Callback:
    """The callback URL in its one reading, or Refused (reason ``invalid_request``) when it
    is not a plain ``http(s)://host[:port]/path?query``."""
    if not isinstance(url, str) or len(url) > MAX_URL:
        raise Refused(
            f"callback_url must be a URL of at most {MAX_URL} characters", "invalid_request"
        )
    if not _TARGET_CHARS.match(url) or "\\" in url:
        raise Refused(
            "callback_url may hold printable ASCII only: no spaces, control characters or "
            "backslashes (percent-encode them)",
            "invalid_request",
        )
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORT or not url.lower().startswith(f"{scheme}://"):
        raise Refused("callback_url must be an absolute http(s) URL", "invalid_request")
    if "@" in parts.netloc:
        raise Refused("callback_url must not carry user info (user@host)", "invalid_request")
    try:
        host, port = _authority(parts.netloc)
    except Refused as exc:
        raise Refused(exc.message, "invalid_request") from None
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Callback(scheme, host, port or DEFAULT_PORT[scheme], target)


@dataclass(frozen=True)
class AllowList:
    """Allow-list entries: (host, port or None for the scheme's default)."""

    entries: frozenset[tuple[str, int | None]]

    def allows(self, callback: Callback) -> bool:
        default = DEFAULT_PORT[callback.scheme]
        return (callback.host, callback.port) in self.entries or (
            callback.port == default and (callback.host, None) in self.entries
        )

    def listed_address(self, address: IpAddress) -> bool:
        """Is this address itself an entry (so it may be reached though not global)?"""
        return any(host == str(address) for host, _ in self.entries)

    def check(self, callback: Callback) -> Callback:
        """The callback if its host and port are allowed and, for an IP literal, its
        address too; Refused otherwise. (A DNS name's addresses are checked at delivery,
        where they are resolved: :meth:`resolve`.)"""
        if not self.allows(callback):
            raise Refused(
                "callback_url's host and port are not in AURUM_WEBHOOK_ALLOWED_HOSTS (exact "
                "host and port; a bare host means port 80/443): ask the operator to allow it"
            )
        if callback.ip is not None:
            self.check_address(callback.ip)
        return callback

    def check_address(self, address: IpAddress) -> None:
        mapped = getattr(address, "ipv4_mapped", None)
        seen = mapped or address
        if (
            not seen.is_global or seen.is_multicast or seen.is_reserved
        ) and not self.listed_address(seen):
            raise Refused(
                f"callback address {seen} is not public (loopback, private, link-local or "
                "reserved) and not itself in AURUM_WEBHOOK_ALLOWED_HOSTS"
            )

    def resolve(self, callback: Callback) -> IpAddress:
        """The one address to connect to: the IP literal, or the name resolved once with
        every address checked. Refused for a refused address; OSError when the name does
        not resolve now (worth another try)."""
        self.check(callback)
        if callback.ip is not None:
            return callback.ip
        infos = socket.getaddrinfo(callback.host, callback.port, type=socket.SOCK_STREAM)
        addresses = [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]
        if not addresses:
            raise OSError(f"{callback.host} has no address")
        for address in addresses:
            self.check_address(address)
        return addresses[0]


def parse_allow_list(text: str) -> AllowList:
    """``AURUM_WEBHOOK_ALLOWED_HOSTS``: comma-separated ``host``, ``host:port`` or
    ``[v6]:port``; ValueError naming a malformed entry."""
    entries: set[tuple[str, int | None]] = set()
    for raw in text.split(","):
        entry = raw.strip().lower()
        if not entry:
            continue
        try:
            entries.add(_authority(entry))
        except Refused as exc:
            why = exc.message.replace("callback_url's ", "its ")
            raise ValueError(f"AURUM_WEBHOOK_ALLOWED_HOSTS entry {entry!r}: {why}") from None
    return AllowList(frozenset(entries))
