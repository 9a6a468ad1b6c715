"""Record SOCK_DIAG dumps from a real kernel for tests/unit/test_listeners_parse.py.

Run as root from the repository root:  .venv/bin/python tests/data/sockdiag/record_dumps.py

In a network namespace made here (deleted at the end, also on failure) it opens a known set of
sockets (`open_sockets`: listeners on specific and wildcard addresses, bound UDP, one bound to a
device, a bound TCP socket that does not listen, connected UDP clients, established TCP
connections), then writes each dump the kernel sent as NAME.bin, with its parse beside it as
NAME.expected.json. `tcp4` and the like are the requests the watcher makes (serving states
only); `tcp4-all-states` and the like ask for every state, so the parser's own filtering is
tested on real clients and connections. A parse is written only after it matches the sockets
opened, so a parser bug cannot slip into the expected files. Recorded on Linux 6.18.
"""

from __future__ import annotations

import json
import socket
import sys
from contextlib import ExitStack
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent.parent)]

from netns import Netns  # noqa: E402
from porttrap import netlink  # noqa: E402
from porttrap.model import Proto  # noqa: E402
from porttrap.sensors.listeners import (  # noqa: E402
    ALL_STATES,
    SOCK_DIAG_BY_FAMILY,
    Listener,
    open_diag_socket,
    parse_dump,
    parse_reply,
    request,
)

V4, V6 = "192.0.2.1", "2001:db8::1"
LO = 1  # the loopback interface's index in a fresh namespace

# (proto, address, port, interface index) of each serving socket opened
SERVING = [
    (Proto.TCP, V4, 8080, 0),
    (Proto.TCP, "0.0.0.0", 8081, 0),
    (Proto.TCP, V6, 8443, 0),
    (Proto.TCP, "::", 8444, 0),  # dual-stack
    (Proto.UDP, "0.0.0.0", 5353, 0),
    (Proto.UDP, V6, 5354, 0),
    (Proto.UDP, V4, 5355, LO),  # SO_BINDTODEVICE lo
]
BOUND_ONLY = (V4, 8082)  # TCP, bound, never listening: state CLOSE, serves nothing


def family_of(address: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def open_sockets(stack: ExitStack) -> None:
    """SERVING, BOUND_ONLY, and per family a connected UDP client and an established TCP
    connection (both ends, to 8080 and 8443); all closed when `stack` closes."""
    servers: dict[tuple[str, int], socket.socket] = {}
    for proto, address, port, ifindex in SERVING:
        family = family_of(address)
        if proto is Proto.TCP:
            server = socket.create_server((address, port), family=family)
            servers[address, port] = stack.enter_context(server)
            continue
        udp = stack.enter_context(socket.socket(family, socket.SOCK_DGRAM))
        if ifindex:
            udp.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"lo")
        udp.bind((address, port))
    stack.enter_context(socket.socket()).bind(BOUND_ONLY)
    for address, tcp_port, udp_port in ((V4, 8080, 5353), (V6, 8443, 5354)):
        client = stack.enter_context(socket.socket(family_of(address), socket.SOCK_DGRAM))
        client.connect((address, udp_port))
        stack.enter_context(socket.create_connection((address, tcp_port), timeout=5))
        stack.enter_context(servers[address, tcp_port].accept()[0])


def dump_raw(sock: socket.socket, seq: int, family: int, proto: Proto, states: int | None) -> bytes:
    """Every datagram of one dump, up to and including NLMSG_DONE."""
    sock.settimeout(5)
    sock.send(request(seq, family, proto, states))
    chunks = []
    for _ in range(64):
        chunks.append(sock.recv(65536))
        if parse_reply(chunks[-1], proto, seq).done:
            return b"".join(chunks)
    raise RuntimeError("no NLMSG_DONE in 64 datagrams")


def expected(proto: Proto, family: int) -> set[tuple[int, str, int]]:
    return {
        (port, address, ifindex)
        for p, address, port, ifindex in SERVING
        if p is proto and family_of(address) == family
    }


def as_json(listener: Listener) -> dict[str, object]:
    return {"port": listener.port, "address": str(listener.address), "ifindex": listener.ifindex}


def record(sock: socket.socket, seq: int, family: int, proto: Proto, all_states: bool) -> None:
    name = f"{proto}{4 if family == socket.AF_INET else 6}" + ("-all-states" if all_states else "")
    data = dump_raw(sock, seq, family, proto, ALL_STATES if all_states else None)
    listeners = parse_dump(data, proto)
    got = {(item.port, str(item.address), item.ifindex) for item in listeners}
    assert got == expected(proto, family), (name, got)
    assert len(got) == len(listeners), (name, listeners)
    messages = [kind for kind, _, _ in netlink.split(data)[0] if kind == SOCK_DIAG_BY_FAMILY]
    assert (len(messages) > len(listeners)) == all_states, (name, len(messages))
    (HERE / f"{name}.bin").write_bytes(data)
    parse = {"proto": str(proto), "listeners": [as_json(item) for item in listeners]}
    (HERE / f"{name}.expected.json").write_text(json.dumps(parse, indent=2) + "\n")
    print(f"{name}: {len(data)} bytes, {len(messages)} sockets, {len(listeners)} serving")


def main() -> None:
    netns = Netns.create()
    try:
        netns.run(["ip", "addr", "add", f"{V4}/32", "dev", "lo"])
        netns.run(["ip", "addr", "add", f"{V6}/128", "dev", "lo"])
        with ExitStack() as stack, netns.inside():
            open_sockets(stack)
            sock = stack.enter_context(open_diag_socket())
            seq = 1
            for proto in Proto:
                for family in (socket.AF_INET, socket.AF_INET6):
                    for all_states in (False, True):
                        record(sock, seq, family, proto, all_states)
                        seq += 1
    finally:
        netns.delete()


if __name__ == "__main__":
    main()
