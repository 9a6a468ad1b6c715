"""Reading porttrap's named counters straight from nf_tables over netlink.

libnftables answers `list counter` only after fetching every element of every set in the table
(its cache), which under a forged flood is 100,000+ elements and over a second, on the event
loop, four times a second: the block sets then rotate late (bench/flood.py). One
NFT_MSG_GETOBJ dump of counter objects, filtered by table in the kernel, costs the same with
empty sets or full ones. Read-only; writes still go through libnftables (`kernel.Nft`).
Numbers from include/uapi/linux/netfilter/{nfnetlink,nf_tables}.h.
"""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import Callable

from porttrap import netlink
from porttrap.errors import FirewallError

NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_GETTABLE, NFT_MSG_NEWTABLE, NFT_MSG_GETOBJ = 1, 0, 19
NFTA_TABLE_NAME = 1
NFPROTO_INET = 1
NFT_OBJECT_COUNTER = 1
NFTA_OBJ_TABLE, NFTA_OBJ_NAME, NFTA_OBJ_TYPE, NFTA_OBJ_DATA = 1, 2, 3, 4
NFTA_COUNTER_PACKETS = 2
RECV_SIZE = 65536
MAX_DATAGRAMS = 64  # a handful of counters fit in one; a runaway dump must not hang us
TIMEOUT = 2.0

_U64 = struct.Struct("!Q")
_U32 = struct.Struct("!I")


def counters_request(seq: int, table: str) -> bytes:
    """A dump request for the counter objects of table `table` in family inet."""
    body = netlink.NFGENMSG.pack(NFPROTO_INET, 0, 0)
    body += netlink.attribute(NFTA_OBJ_TABLE, table.encode() + b"\0")
    body += netlink.attribute(NFTA_OBJ_TYPE, _U32.pack(NFT_OBJECT_COUNTER))
    kind = NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_GETOBJ
    return netlink.message(kind, netlink.NLM_F_REQUEST | netlink.NLM_F_DUMP, seq, body)


def parse_counters(data: bytes, table: str) -> tuple[dict[str, int], bool]:
    """(packets per counter name, whether the dump is over) from one reply datagram.
    FirewallError when the kernel answered with an error (ENOENT: the table is gone)."""
    found: dict[str, int] = {}
    messages, _ = netlink.split(data)
    for kind, _, body in messages:
        if kind == netlink.NLMSG_DONE:
            return found, True
        if kind == netlink.NLMSG_ERROR:
            if code := netlink.error_code(body):
                raise FirewallError(f"reading counters of table inet {table}: errno {code}")
            return found, True
        attrs = netlink.attributes(body, netlink.NFGENMSG.size) or {}
        name, table_name = attrs.get(NFTA_OBJ_NAME), attrs.get(NFTA_OBJ_TABLE)
        if name is None or table_name is None or table_name.rstrip(b"\0").decode() != table:
            continue
        nested = netlink.attributes(attrs.get(NFTA_OBJ_DATA, b"")) or {}
        packets = nested.get(NFTA_COUNTER_PACKETS)
        if packets is not None and len(packets) == _U64.size:
            found[name.rstrip(b"\0").decode()] = _U64.unpack(packets)[0]
    return found, False


def read_counters(table: str) -> dict[str, int]:
    """Packets per named counter in table inet `table`, in the calling thread's namespace;
    empty when the table does not exist (the kernel filters the dump by table)."""
    found: dict[str, int] = {}

    def take(data: bytes) -> bool:
        part, done = parse_counters(data, table)
        found.update(part)
        return done

    _ask(counters_request(1, table), take, f"reading counters of table inet {table}")
    return found


def _ask(request: bytes, take: Callable[[bytes], bool], what: str) -> None:
    """Send `request` to nf_tables and hand each reply datagram to `take` until it says the
    answer is complete. FirewallError, saying `what` was attempted, on any failure."""
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, netlink.NETLINK_NETFILTER) as sock:
            sock.settimeout(TIMEOUT)
            sock.send(request)
            for _ in range(MAX_DATAGRAMS):
                if take(sock.recv(RECV_SIZE)):
                    return
    except OSError as err:
        raise FirewallError(f"{what}: {err}") from err
    raise FirewallError(f"{what}: the answer did not end")


def table_request(seq: int, table: str) -> bytes:
    """A request for table inet `table` alone (not a dump)."""
    body = netlink.NFGENMSG.pack(NFPROTO_INET, 0, 0)
    body += netlink.attribute(NFTA_TABLE_NAME, table.encode() + b"\0")
    kind = NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_GETTABLE
    return netlink.message(kind, netlink.NLM_F_REQUEST | netlink.NLM_F_ACK, seq, body)


def parse_table_reply(data: bytes, table: str) -> bool | None:
    """True: the table exists; False: the kernel said ENOENT; None: nothing decisive yet."""
    for kind, _, body in netlink.split(data)[0]:
        if kind == netlink.NLMSG_ERROR:
            code = netlink.error_code(body)
            if code == errno.ENOENT:
                return False
            if code:
                raise FirewallError(f"looking up table inet {table}: errno {code}")
            return True  # the ack after the table's description
        if kind == NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_NEWTABLE:  # the table's description
            return True
    return None


def table_exists(table: str) -> bool:
    """Whether table inet `table` exists, in the calling thread's namespace. One message, so
    its cost does not grow with the sets (libnftables' `list tables` fetches every element)."""
    found: list[bool] = []

    def take(data: bytes) -> bool:
        answer = parse_table_reply(data, table)
        if answer is not None:
            found.append(answer)
        return answer is not None

    _ask(table_request(1, table), take, f"looking up table inet {table}")
    return found[0]
