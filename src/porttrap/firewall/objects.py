"""Reading porttrap's named counters straight from nf_tables over netlink.

libnftables answers `list counter` only after fetching every element of every set in the table
(its cache), which under a forged flood is 100,000+ elements and over a second, on the event
loop, four times a second: the block sets then rotate late (bench/flood.py). One
NFT_MSG_GETOBJ dump of counter objects, filtered by table in the kernel, costs the same with
empty sets or full ones. Read-only; writes still go through libnftables (`kernel.Nft`).
Numbers from include/uapi/linux/netfilter/{nfnetlink,nf_tables}.h.
"""

from __future__ import annotations

import socket
import struct

from porttrap.errors import FirewallError
from porttrap.sensors import netlink

NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_GETOBJ = 19
NFPROTO_INET = 1
NFT_OBJECT_COUNTER = 1
NFTA_OBJ_TABLE, NFTA_OBJ_NAME, NFTA_OBJ_TYPE, NFTA_OBJ_DATA = 1, 2, 3, 4
NFTA_COUNTER_PACKETS = 2
NLA_TYPE_MASK = 0x3FFF
RECV_SIZE = 65536
MAX_DATAGRAMS = 64  # a handful of counters fit in one; a runaway dump must not hang us
TIMEOUT = 2.0

_NFGENMSG = struct.Struct("!BBH")
_NLATTR = struct.Struct("=HH")
_U64 = struct.Struct("!Q")
_U32 = struct.Struct("!I")


def _attribute(kind: int, value: bytes) -> bytes:
    length = _NLATTR.size + len(value)
    return _NLATTR.pack(length, kind) + value + b"\0" * (netlink.align(length) - length)


def counters_request(seq: int, table: str) -> bytes:
    """A dump request for the counter objects of table `table` in family inet."""
    body = _NFGENMSG.pack(NFPROTO_INET, 0, 0)
    body += _attribute(NFTA_OBJ_TABLE, table.encode() + b"\0")
    body += _attribute(NFTA_OBJ_TYPE, _U32.pack(NFT_OBJECT_COUNTER))
    kind = NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_GETOBJ
    return netlink.message(kind, netlink.NLM_F_REQUEST | netlink.NLM_F_DUMP, seq, body)


def attributes(data: bytes, offset: int = 0) -> dict[int, bytes]:
    """Attributes by type from `offset` on; a malformed tail is ignored."""
    found: dict[int, bytes] = {}
    while offset + _NLATTR.size <= len(data):
        length, kind = _NLATTR.unpack_from(data, offset)
        if length < _NLATTR.size or offset + length > len(data):
            break
        found[kind & NLA_TYPE_MASK] = data[offset + _NLATTR.size : offset + length]
        offset += netlink.align(length)
    return found


def parse_counters(data: bytes, table: str) -> tuple[dict[str, int], bool]:
    """(packets per counter name, whether the dump is over) from one reply datagram.
    FirewallError when the kernel answered with an error (ENOENT: the table is gone)."""
    found: dict[str, int] = {}
    messages, _ = netlink.split(data)
    for kind, _, body in messages:
        if kind == netlink.NLMSG_DONE:
            return found, True
        if kind == netlink.NLMSG_ERROR:
            code = -netlink.ERRNO.unpack_from(body)[0] if len(body) >= 4 else 0
            if code:
                raise FirewallError(f"reading counters of table inet {table}: errno {code}")
            return found, True
        attrs = attributes(body, _NFGENMSG.size)
        name, table_name = attrs.get(NFTA_OBJ_NAME), attrs.get(NFTA_OBJ_TABLE)
        if name is None or table_name is None or table_name.rstrip(b"\0").decode() != table:
            continue
        packets = attributes(attrs.get(NFTA_OBJ_DATA, b"")).get(NFTA_COUNTER_PACKETS)
        if packets is not None and len(packets) == _U64.size:
            found[name.rstrip(b"\0").decode()] = _U64.unpack(packets)[0]
    return found, False


def read_counters(table: str) -> dict[str, int]:
    """Packets per named counter in table inet `table`, in the calling thread's namespace;
    empty when the table does not exist (the kernel filters the dump by table)."""
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER) as sock:
            sock.settimeout(TIMEOUT)
            sock.send(counters_request(1, table))
            found: dict[str, int] = {}
            for _ in range(MAX_DATAGRAMS):
                part, done = parse_counters(sock.recv(RECV_SIZE), table)
                found.update(part)
                if done:
                    return found
    except OSError as err:
        raise FirewallError(f"reading counters of table inet {table}: {err}") from err
    raise FirewallError(f"reading counters of table inet {table}: the dump did not end")


NFT_MSG_GETTABLE = 1
NFTA_TABLE_NAME = 1
ENOENT = 2


def table_request(seq: int, table: str) -> bytes:
    """A request for table inet `table` alone (not a dump)."""
    body = _NFGENMSG.pack(NFPROTO_INET, 0, 0)
    body += _attribute(NFTA_TABLE_NAME, table.encode() + b"\0")
    kind = NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_GETTABLE
    return netlink.message(kind, netlink.NLM_F_REQUEST | netlink.NLM_F_ACK, seq, body)


def parse_table_reply(data: bytes, table: str) -> bool | None:
    """True: the table exists; False: the kernel said ENOENT; None: nothing decisive yet."""
    for kind, _, body in netlink.split(data)[0]:
        if kind == netlink.NLMSG_ERROR:
            code = -netlink.ERRNO.unpack_from(body)[0] if len(body) >= 4 else 0
            if code == ENOENT:
                return False
            if code:
                raise FirewallError(f"looking up table inet {table}: errno {code}")
            return True  # the ack after the table's description
        if kind == NFNL_SUBSYS_NFTABLES << 8 | 0:  # NFT_MSG_NEWTABLE: the description
            return True
    return None


def table_exists(table: str) -> bool:
    """Whether table inet `table` exists, in the calling thread's namespace. One message, so
    its cost does not grow with the sets (libnftables' `list tables` fetches every element)."""
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER) as sock:
            sock.settimeout(TIMEOUT)
            sock.send(table_request(1, table))
            for _ in range(MAX_DATAGRAMS):
                found = parse_table_reply(sock.recv(RECV_SIZE), table)
                if found is not None:
                    return found
    except OSError as err:
        raise FirewallError(f"looking up table inet {table}: {err}") from err
    raise FirewallError(f"looking up table inet {table}: no answer")
