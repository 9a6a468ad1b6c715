"""Reading porttrap's table in nf_tables over netlink: whether it exists, and its named counters.

libnftables answers `list counters` and `list tables` only after fetching every element of
every set in the table (its cache), which under a forged flood is 100,000+ elements and over a
second, on the event loop, four times a second: the block sets then rotate late
(bench/flood.py). One NFT_MSG_GETOBJ dump of counter objects, filtered by table in the kernel,
and one NFT_MSG_GETTABLE cost the same with empty sets or full ones. Read-only; writes go
through libnftables (`kernel.Nft`).

`NftObjects` does the talking; the requests and the parsing of replies are pure functions,
tested with constructed messages (tests/unit/test_firewall_objects.py).
Numbers from include/uapi/linux/netfilter/{nfnetlink,nf_tables}.h.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import struct
import threading
from collections.abc import Callable

from porttrap import netlink
from porttrap.errors import FirewallError
from porttrap.firewall.kernel import Nft

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
_HINTS = {errno.EPERM: "it needs CAP_NET_ADMIN (run porttrap as root)"}

Take = Callable[[bytes, int], bool]  # (datagram, seq of our request) -> whether it is complete


class NftObjects:
    """Reads nf_tables over one netlink socket, opened when this is made: like a libnftables
    context, it stays in the network namespace of the thread that made it, whichever thread
    uses it afterwards. FirewallError, saying what was attempted, on any failure.

    `sock` replaces the NETLINK_NETFILTER socket (tests give one end of a socketpair)."""

    def __init__(self, sock: socket.socket | None = None) -> None:
        self._sock = sock if sock is not None else _open_socket()
        self._sock.settimeout(TIMEOUT)
        self._seq = 0
        self._lock = threading.Lock()  # replies are told apart only by seq: one request at a time

    def table_exists(self, table: str) -> bool:
        """Whether table inet `table` exists. One message, so its cost does not grow with the
        sets (libnftables' `list tables` fetches every element first)."""
        found: list[bool] = []

        def take(data: bytes, seq: int) -> bool:
            answer = parse_table_reply(data, table, seq)
            if answer is not None:
                found.append(answer)
            return answer is not None

        self._ask(lambda seq: table_request(seq, table), take, f"looking up table inet {table}")
        return found[0]

    def counters(self, table: str) -> dict[str, int]:
        """Packets per named counter in table inet `table`; empty when the table does not exist
        (the kernel filters the dump by table)."""
        found: dict[str, int] = {}

        def take(data: bytes, seq: int) -> bool:
            part, done = parse_counters(data, table, seq)
            found.update(part)
            return done

        what = f"reading counters of table inet {table}"
        self._ask(lambda seq: counters_request(seq, table), take, what)
        return found

    def close(self) -> None:
        """Close the socket. Safe to call more than once."""
        self._sock.close()

    def __del__(self) -> None:
        # The daemon keeps its readers for its whole life and never closes them: close the
        # socket when the reader goes, as a libnftables context frees itself, rather than leave
        # it to warn (ResourceWarning). None: __init__ failed before it had one.
        sock: socket.socket | None = getattr(self, "_sock", None)
        if sock is not None:
            sock.close()

    def _ask(self, request: Callable[[int], bytes], take: Take, what: str) -> None:
        """Send `request(seq)` and hand each reply datagram to `take` until it says the answer
        is complete, within MAX_DATAGRAMS datagrams and TIMEOUT seconds for each."""
        with self._lock:
            self._seq = self._seq % 0xFFFFFFFF + 1
            try:
                self._discard_pending()
                self._sock.send(request(self._seq))
                for _ in range(MAX_DATAGRAMS):
                    if take(self._sock.recv(RECV_SIZE), self._seq):
                        return
            except TimeoutError as err:
                raise FirewallError(f"{what}: no answer from the kernel in {TIMEOUT:g} s") from err
            except OSError as err:
                raise FirewallError(f"{what}: {_why(err)}") from err
        raise FirewallError(f"{what}: the answer did not end within {MAX_DATAGRAMS} datagrams")

    def _discard_pending(self) -> None:
        """Read what an earlier request left unread (it timed out, or its dump was cut short):
        the kernel refuses a new dump (EBUSY) until the old one has been read to its end."""
        self._sock.settimeout(0)
        try:
            for _ in range(MAX_DATAGRAMS):
                try:
                    self._sock.recv(RECV_SIZE)
                except BlockingIOError:
                    return
                except OSError as err:
                    if err.errno != errno.ENOBUFS:  # replies lost: nothing left to read for them
                        raise
        finally:
            self._sock.settimeout(TIMEOUT)


def made_here(nft: Nft | None, objects: NftObjects | None) -> tuple[Nft, NftObjects]:
    """`nft` and `objects` as given, or both made now, in the calling thread's network
    namespace. One without the other could write one namespace and read another."""
    if nft is None and objects is None:
        return Nft(), NftObjects()
    if nft is None or objects is None:
        raise TypeError("give nft and objects together (made in one network namespace) or neither")
    return nft, objects


def _open_socket() -> socket.socket:
    try:
        return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, netlink.NETLINK_NETFILTER)
    except OSError as err:
        raise FirewallError(f"cannot open a netlink socket to nf_tables: {_why(err)}") from err


def _why(err: OSError) -> str:
    if err.errno is None:
        return str(err)
    return _error_text(err.errno)


def _error_text(code: int) -> str:
    """An errno from nf_tables, with what to do about it when that is known."""
    hint = _HINTS.get(code)
    return netlink.errno_text(code) + (f": {hint}" if hint else "")


# -- requests and replies (pure) -----------------------------------------------------------------


def counters_request(seq: int, table: str) -> bytes:
    """A dump request for the counter objects of table `table` in family inet."""
    body = netlink.NFGENMSG.pack(NFPROTO_INET, 0, 0)
    body += netlink.attribute(NFTA_OBJ_TABLE, table.encode() + b"\0")
    body += netlink.attribute(NFTA_OBJ_TYPE, _U32.pack(NFT_OBJECT_COUNTER))
    kind = NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_GETOBJ
    return netlink.message(kind, netlink.NLM_F_REQUEST | netlink.NLM_F_DUMP, seq, body)


def parse_counters(data: bytes, table: str, seq: int) -> tuple[dict[str, int], bool]:
    """(packets per counter name, whether the dump is over) from one reply datagram to request
    `seq`; messages answering another request (one that timed out) are left out.
    FirewallError when the kernel answered with an error."""
    found: dict[str, int] = {}
    messages, _ = netlink.split(data)
    for kind, answered, body in messages:
        if answered != seq:
            continue
        if kind == netlink.NLMSG_DONE:
            return found, True
        if kind == netlink.NLMSG_ERROR:
            if code := netlink.error_code(body):
                raise FirewallError(f"reading counters of table inet {table}: {_error_text(code)}")
            return found, True
        attrs = netlink.attributes(body, netlink.NFGENMSG.size) or {}
        name, table_name = attrs.get(NFTA_OBJ_NAME), attrs.get(NFTA_OBJ_TABLE)
        if name is None or table_name is None or table_name.rstrip(b"\0") != table.encode():
            continue
        nested = netlink.attributes(attrs.get(NFTA_OBJ_DATA, b"")) or {}
        packets = nested.get(NFTA_COUNTER_PACKETS)
        if packets is not None and len(packets) == _U64.size:
            # Names porttrap gives are ASCII: one that is not even UTF-8 is not its counter.
            with contextlib.suppress(UnicodeDecodeError):
                found[name.rstrip(b"\0").decode()] = _U64.unpack(packets)[0]
    return found, False


def table_request(seq: int, table: str) -> bytes:
    """A request for table inet `table` alone (not a dump). No NLM_F_ACK: the answer is one
    message, the table's description or an error, and no ack is left behind unread."""
    body = netlink.NFGENMSG.pack(NFPROTO_INET, 0, 0)
    body += netlink.attribute(NFTA_TABLE_NAME, table.encode() + b"\0")
    kind = NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_GETTABLE
    return netlink.message(kind, netlink.NLM_F_REQUEST, seq, body)


def parse_table_reply(data: bytes, table: str, seq: int) -> bool | None:
    """True: the table exists; False: the kernel said ENOENT; None: nothing decisive yet.
    Messages answering another request (one that timed out) are left out."""
    for kind, answered, body in netlink.split(data)[0]:
        if answered != seq:
            continue
        if kind == netlink.NLMSG_ERROR:
            code = netlink.error_code(body)
            if code == errno.ENOENT:
                return False
            if code:
                raise FirewallError(f"looking up table inet {table}: {_error_text(code)}")
            return True  # an ack: the request succeeded
        if kind == NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_NEWTABLE:  # the table's description
            return True
    return None
