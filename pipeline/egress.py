"""Where a fetch driven by untrusted input may connect: :class:`AddressPolicy`.

Links, their redirects and the robots.txt files they imply are written by strangers. A
teaser linking to ``http://127.0.0.1:8000/v1/items/1``, to the cloud metadata service
(``169.254.169.254``), to a cluster-internal name, or to a public name that resolves
(or later re-resolves) to one of those, must not make the product fetch it.

The policy admits a connection only to **global** addresses (:attr:`ipaddress.IPv4Address.is_global`):
loopback, private (10/8, 172.16/12, 192.168/16), link-local (169.254/16, fe80::/10),
CGNAT (100.64/10), unique-local (fc00::/7), unspecified, reserved, documentation and
multicast ranges are refused, and so are IPv6 forms that carry an IPv4 address
(IPv4-mapped ``::ffff:a.b.c.d``, 6to4, Teredo, NAT64 ``64:ff9b::a.b.c.d``, the
deprecated ``::a.b.c.d``), judged by the address they carry; RFC 8215's local-use
NAT64 prefix and site-local ``fec0::/10`` are refused outright. Host
names are resolved (``getaddrinfo``: numeric, octal, hex and dotless forms such as
``0x7f.1`` or ``2130706433`` resolve to what they mean) and a name is refused when **any**
of its addresses is refused. ``allow`` lists networks admitted all the same: an intranet
a user ingests from on purpose, the loopback servers of the tests.

It is enforced where the connection is made: :func:`policy_transport` gives httpx a
network backend that resolves the host once, checks every address and connects to the
checked address (TLS keeps the name for SNI and certificate checks), so a name that
resolves to a public address when checked and to loopback when connecting (DNS
rebinding) cannot pass, and every hop of a redirect and every robots.txt request goes
through it. :meth:`AddressPolicy.check_url` is the same check before a request, for a
clear outcome (``blocked_address``) without opening anything. Requests through a
configured HTTP proxy connect to the proxy; the proxy's own policy applies beyond it.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpcore
import httpx

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class BlockedAddress(Exception):
    """A fetch would have connected to an address the policy refuses."""

    def __init__(self, host: str, address: str | None, reason: str) -> None:
        self.host, self.address, self.reason = host, address, reason
        where = f"{host} ({address})" if address and address != host else host
        super().__init__(f"{where}: {reason}")


NAT64_PREFIX = ipaddress.IPv6Network("64:ff9b::/96")
"""RFC 6052's well-known NAT64 prefix: a gateway connects to the IPv4 address in the low
32 bits (DNS64 synthesises these for names with only an A record)."""
IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")
"""RFC 4291's deprecated IPv4-compatible form ``::a.b.c.d`` (``::`` and ``::1`` aside)."""
LOCAL_IPV6 = (ipaddress.IPv6Network("64:ff9b:1::/48"), ipaddress.IPv6Network("fec0::/10"))
"""Ranges Python 3.11 still calls global: RFC 8215's local-use NAT64 prefix (a gateway
on the local network translates it to any IPv4 address) and deprecated site-local."""


def _carried_ipv4(ip: Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, 6to4, Teredo's client, NAT64's
    well-known prefix, the deprecated IPv4-compatible form)."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        if ip.sixtofour is not None:
            return ip.sixtofour
        if ip.teredo is not None:
            return ip.teredo[1]
        if ip in NAT64_PREFIX or (ip in IPV4_COMPATIBLE and int(ip) > 1):
            return ipaddress.IPv4Address(int(ip) & 0xFFFF_FFFF)
    return None


@dataclass(frozen=True)
class AddressPolicy:
    """Global addresses only, plus the ``allow`` networks (see the module docstring)."""

    allow: tuple[Network, ...] = ()

    @classmethod
    def allowing(cls, networks: Iterable[str]) -> AddressPolicy:
        """The policy with ``networks`` (CIDR strings, e.g. ``127.0.0.0/8``) admitted."""
        return cls(tuple(ipaddress.ip_network(n, strict=False) for n in networks))

    def refusal(self, address: str) -> str | None:
        """Why ``address`` (an IP literal) is refused, or None when it is admitted."""
        ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone
        if any(ip in network for network in self.allow):
            return None
        carried = _carried_ipv4(ip)
        if carried is not None:
            if any(carried in network for network in self.allow):
                return None
            if not carried.is_global:
                return f"carries the non-global IPv4 address {carried}"
        if ip.is_loopback:
            return "loopback address"
        if ip.is_link_local:
            return "link-local address (cloud metadata lives here)"
        if ip.is_multicast:
            return "multicast address"
        if any(ip in network for network in LOCAL_IPV6):
            return "local-use NAT64 or site-local IPv6 address"
        if not ip.is_global:
            return "not a global address (private, shared, reserved or local range)"
        return None

    def resolve(self, host: str, port: int) -> list[str]:
        """The addresses ``host`` resolves to, all of them admitted; raises
        :class:`BlockedAddress` when any is refused, ``OSError`` when it does not resolve."""
        host = host.strip("[]")
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except UnicodeError as exc:
            raise OSError(f"{host}: not a host name ({exc})") from exc
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        for address in addresses:
            reason = self.refusal(address)
            if reason is not None:
                raise BlockedAddress(host, address, reason)
        return addresses

    def check_url(self, url: str) -> None:
        """Raise :class:`BlockedAddress` when ``url``'s host resolves to a refused
        address (a host that does not resolve is left to the request to report)."""
        parts = urlsplit(url)
        if not parts.hostname:
            return
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            return  # a bad port: the request reports the URL as invalid
        try:
            self.resolve(parts.hostname, port)
        except OSError:
            return


class _PolicyBackend(httpcore.SyncBackend):
    """httpcore's socket backend, connecting only to addresses the policy admits."""

    def __init__(self, policy: AddressPolicy) -> None:
        self.policy = policy

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        try:
            addresses = self.policy.resolve(host, port)
        except OSError as exc:
            raise httpcore.ConnectError(str(exc)) from exc
        error: Exception | None = None
        for address in addresses:  # connect to what was checked: no second lookup
            try:
                return super().connect_tcp(address, port, timeout, local_address,
                                           socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
        raise error or httpcore.ConnectError(f"{host}: no address")

    def connect_unix_socket(self, path, timeout=None, socket_options=None):
        raise BlockedAddress(path, None, "unix sockets are never fetched")


def policy_transport(policy: AddressPolicy, **kwargs) -> httpx.HTTPTransport:
    """An ``httpx.HTTPTransport`` (``kwargs`` as its own) whose connections obey
    ``policy``. httpx takes no network backend argument, so it is set on the transport's
    httpcore pool, which hands it to every connection it opens."""
    transport = httpx.HTTPTransport(**kwargs)
    transport._pool._network_backend = _PolicyBackend(policy)
    return transport
