"""The `[metrics]` section: where the Prometheus endpoint listens, if anywhere (off by default).

`listen` takes an IP address literal, never a host name: a name would be resolved when the
daemon starts, so the socket opened would depend on DNS or /etc/hosts at boot ("localhost" is
127.0.0.1, ::1 or both, depending on the system), and an endpoint that tells what porttrap saw
must open exactly where the admin said.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable

from porttrap.config import fields
from porttrap.config.fields import Section
from porttrap.config.schema import Listen, MetricsConfig, Trap
from porttrap.model import Proto

KEYS = ("listen",)
DEFAULT_PORT = 9477
EXAMPLE = f'"127.0.0.1:{DEFAULT_PORT}" or "[::1]:{DEFAULT_PORT}"'
_HOST_PORT = re.compile(r"\[(?P<v6>[^\]]+)\]:(?P<port6>[^:]*)|(?P<host>[^:\[\]]*):(?P<port>[^:]*)")


def build_metrics(section: Section, traps: Iterable[Trap] = ()) -> MetricsConfig:
    """The `[metrics]` section; a problem for a bad `listen` and for one that is a trap port."""
    section.check_keys(KEYS)
    listen = section.get("listen", parse_listen, None)
    if listen is not None:
        for trap in traps:
            if trap.proto is Proto.TCP and trap.port == listen.port:
                section.problems.add(
                    fields.join(section.key, "listen"),
                    f"port {listen.port} is also a TCP trap port: a trap must serve nothing; "
                    f"give metrics another port, such as {DEFAULT_PORT}",
                )
                break
    return MetricsConfig(listen=listen)


def parse_listen(value: object) -> Listen:
    """'127.0.0.1:9477' or '[2001:db8::1]:9477': an IP address literal and a port 1-65535."""
    if not isinstance(value, str):
        hint = f'; write "127.0.0.1:{value}"' if isinstance(value, int) and value > 0 else ""
        raise ValueError(
            f"expected an address and port such as {EXAMPLE}, got {fields.show(value)}{hint}"
        )
    match = _HOST_PORT.fullmatch(value.strip())
    if match is None:
        raise ValueError(_shape_message(value))
    host = match.group("v6") if match.group("v6") is not None else match.group("host")
    port = match.group("port6") if match.group("v6") is not None else match.group("port")
    return Listen(_address(host, value, bracketed=match.group("v6") is not None), _port(port))


def _shape_message(value: str) -> str:
    hint = ""
    if value.count(":") > 1 and "[" not in value:
        hint = f'; put an IPv6 address in brackets: "[{value.rsplit(":", 1)[0]}]:PORT"'
    elif value.strip().isdigit():
        hint = f"; add the address: {fields.show('127.0.0.1:' + value.strip())}"
    elif ":" not in value:
        hint = f"; add the port: {fields.show(value.strip() + ':' + str(DEFAULT_PORT))}"
    return f"expected an address and port such as {EXAMPLE}, got {fields.show(value)}{hint}"


def _address(
    host: str, value: str, *, bracketed: bool
) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    if not host:
        raise ValueError(
            f"no address in {fields.show(value)}: give one, such as {EXAMPLE} (or "
            f'"0.0.0.0:{DEFAULT_PORT}" for every IPv4 address, which exposes the metrics)'
        )
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(_name_message(host, value)) from None
    if address.version == 4 and bracketed:
        raise ValueError(f"brackets are for IPv6 addresses only; write {host}:PORT")
    if address.is_multicast:
        raise ValueError(f"{host} is a multicast address; listen on one of this host's addresses")
    return address


def _name_message(host: str, value: str) -> str:
    """Host names are refused: the socket opened must not depend on name resolution at boot."""
    port = value.rsplit(":", 1)[-1]
    suggestion = f"127.0.0.1:{port}" if host.lower() == "localhost" else f"ADDRESS:{port}"
    return (
        f"{fields.show(host)} is not an IP address; give an address, not a host name (a name "
        "would be looked up at start, so where porttrap listens would depend on DNS or "
        f"/etc/hosts): write {fields.show(suggestion)}"
    )


def _port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ValueError(
            f"port {fields.show(text)} is not a port number 1-65535, such as {DEFAULT_PORT}"
        )
    return int(text)


def exposure_warning(listen: Listen) -> str | None:
    """A warning when the endpoint listens beyond loopback; None when it does not."""
    if listen.host.is_loopback:
        return None
    return (
        f"{listen.host} is not a loopback address: whoever reaches port {listen.port} learns "
        "which ports porttrap traps, what it saw and whom it banned; listen on 127.0.0.1 (a "
        "local Prometheus or an SSH tunnel) or a management network, or firewall the port"
    )
