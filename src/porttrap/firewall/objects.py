"""Reading porttrap's table in nf_tables over netlink: whether it exists, and its named counters.

libnftables answers `list counters` and `list tables` only after fetching every element of
every set in the table (its cache), which under a forged flood is 100,000+ elements and over a
second, on the event loop, four times a second: the block sets then rotate late
(bench/flood.py). One NFT_MSG_GETOBJ dump of counter objects, filtered by table in the kernel,
and one NFT_MSG_GETTABLE cost the same with empty sets or full ones. Writes go through
libnftables (`kernel.Nft`), but for one rule it cannot write: the hold's NFQUEUE verdict as an
xtables target (nft_compat), on kernels built without nft_queue (`add_queue_rule`).

`NftObjects` does the talking; the requests and the parsing of replies are pure functions,
tested with constructed messages (tests/unit/test_firewall_objects.py).
Numbers from include/uapi/linux/netfilter/{nfnetlink,nf_tables}.h.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import socket
import struct
import threading
from collections.abc import Callable

from porttrap import netlink
from porttrap.errors import FirewallError
from porttrap.firewall.kernel import Nft

NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_GETTABLE, NFT_MSG_NEWTABLE, NFT_MSG_GETOBJ = 1, 0, 19
NFT_MSG_GETCHAIN, NFT_MSG_GETRULE, NFT_MSG_GETSET, NFT_MSG_GETSETELEM = 4, 7, 10, 13
NFTA_SET_ELEM_LIST_TABLE, NFTA_SET_ELEM_LIST_SET, NFTA_SET_ELEM_LIST_ELEMENTS = 1, 2, 3
NFTA_SET_ELEM_FLAGS = 3
NFT_SET_ELEM_INTERVAL_END = 1
ELEMENT_DATAGRAMS = 1 << 20  # an element dump of a million bans takes a few thousand
NFTA_CHAIN_TABLE, NFTA_CHAIN_NAME, NFTA_CHAIN_HOOK, NFTA_CHAIN_POLICY = 1, 3, 4, 5
NFTA_CHAIN_TYPE = 7
NFTA_RULE_TABLE, NFTA_RULE_CHAIN, NFTA_RULE_EXPRESSIONS = 1, 2, 4
NFT_MSG_NEWRULE, NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END = 6, 0x10, 0x11
NLM_F_CREATE, NLM_F_APPEND = 0x400, 0x800
NFTA_LIST_ELEM, NLA_F_NESTED = 1, 0x8000
NFTA_TARGET_NAME, NFTA_TARGET_REV, NFTA_TARGET_INFO = 1, 2, 3
NFQUEUE_REVISION = 3  # struct xt_NFQ_info_v3 (linux/netfilter/xt_NFQUEUE.h)
NFQ_FLAG_BYPASS = 0x01
_NFQ_INFO_V3 = struct.Struct("=HHH")  # queuenum, queues_total, flags (host order)
NFTA_SET_TABLE, NFTA_SET_NAME, NFTA_SET_FLAGS = 1, 2, 3
NFTA_EXPR_NAME, NFTA_EXPR_DATA = 1, 2
# Expressions whose dump carries state the kernel changes by itself (packets seen, bytes
# used): their data is left out of a rule's shape, only their name counts.
STATEFUL = frozenset({b"counter", b"quota", b"last", b"connlimit"})
NFTA_TABLE_NAME = 1
NFPROTO_INET = 1
NFT_OBJECT_COUNTER = 1
NFTA_OBJ_TABLE, NFTA_OBJ_NAME, NFTA_OBJ_TYPE, NFTA_OBJ_DATA = 1, 2, 3, 4
NFTA_COUNTER_PACKETS = 2
RECV_SIZE = 65536
MAX_DATAGRAMS = 256  # a handful of counters fit in one; a runaway dump must not hang us
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

    def shape(self, table: str) -> str:
        """A digest of table inet `table`'s chains (name, hook, type, policy), rules (each
        chain's in order, without handles or counts) and sets (name and flags), not of set
        elements: compared with the digest read after porttrap wrote the table, it tells
        whether something changed or removed porttrap's chains, rules or sets. Three dumps
        that cost the same with empty sets or full ones (libnftables would fetch every
        element first)."""
        digest = hashlib.sha256()
        for kind, what in ((NFT_MSG_GETCHAIN, "chains"), (NFT_MSG_GETSET, "sets"),
                           (NFT_MSG_GETRULE, "rules")):  # fmt: skip
            found = self._dump(kind, table, f"reading the {what} of table inet {table}")
            digest.update(b"".join(_shape_of(kind, body) for body in found))
        return digest.hexdigest()

    def count_elements(self, table: str, sets: list[str]) -> int:
        """How many elements `sets` of table inet `table` hold (an interval counts once; a
        set that does not exist, none): dumps whose cost grows with the elements but which
        build no addresses (100,000 bans: about 0.1 s, against 2 s or more for libnftables'
        listing and its parse)."""
        return sum(self._count(table, name) for name in sets)

    def _count(self, table: str, name: str) -> int:
        found: list[int] = []
        what = f"counting the elements of set {name} of table inet {table}"

        def take(data: bytes, seq: int) -> bool:
            count, done = parse_element_count(data, seq, what)
            found.append(count)
            return done

        try:
            self._ask(lambda seq: elements_request(seq, table, name), take, what, ELEMENT_DATAGRAMS)
        except FirewallError as err:
            if "ENOENT" not in str(err):
                raise
        return sum(found)

    def _dump(self, kind: int, table: str, what: str) -> list[bytes]:
        found: list[bytes] = []

        def take(data: bytes, seq: int) -> bool:
            part, done = parse_dump(data, table, seq, what)
            found.extend(part)
            return done

        self._ask(lambda seq: dump_request(kind, seq, table), take, what)
        return found

    def add_queue_rule(self, table: str, chain: str, queue: int) -> None:
        """Append to `chain` of table inet `table` the rule `queue num <queue> bypass` as the
        xtables NFQUEUE target (nft_compat), where the kernel has no nft_queue: libnftables
        writes no xtables target. One transaction; FirewallError when the kernel refuses."""
        what = f"adding the NFQUEUE {queue} rule (xtables target) to chain {chain}"

        def take(data: bytes, seq: int) -> bool:
            return parse_ack(data, seq, what)

        self._ask(lambda seq: queue_rule_request(seq, table, chain, queue), take, what)

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

    def _ask(
        self, request: Callable[[int], bytes], take: Take, what: str, most: int | None = None
    ) -> None:
        """Send `request(seq)` and hand each reply datagram to `take` until it says the answer
        is complete, within `most` (MAX_DATAGRAMS) datagrams and TIMEOUT seconds for each."""
        most = MAX_DATAGRAMS if most is None else most
        with self._lock:
            self._seq = self._seq % 0xFFFFFFFF + 1
            try:
                self._discard_pending()
                self._sock.send(request(self._seq))
                for _ in range(most):
                    if take(self._sock.recv(RECV_SIZE), self._seq):
                        return
            except TimeoutError as err:
                raise FirewallError(f"{what}: no answer from the kernel in {TIMEOUT:g} s") from err
            except OSError as err:
                raise FirewallError(f"{what}: {_why(err)}") from err
        raise FirewallError(f"{what}: the answer did not end within {most} datagrams")

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
    bodies, done = parse_dump(data, table, seq, f"reading counters of table inet {table}")
    for body in bodies:
        attrs = netlink.attributes(body) or {}
        name, table_name = attrs.get(NFTA_OBJ_NAME), attrs.get(NFTA_OBJ_TABLE)
        if name is None or table_name is None or table_name.rstrip(b"\0") != table.encode():
            continue
        nested = netlink.attributes(attrs.get(NFTA_OBJ_DATA, b"")) or {}
        packets = nested.get(NFTA_COUNTER_PACKETS)
        if packets is not None and len(packets) == _U64.size:
            # Names porttrap gives are ASCII: one that is not even UTF-8 is not its counter.
            with contextlib.suppress(UnicodeDecodeError):
                found[name.rstrip(b"\0").decode()] = _U64.unpack(packets)[0]
    return found, done


def queue_rule_request(seq: int, table: str, chain: str, queue: int) -> bytes:
    """A batch that appends one rule, xtables' NFQUEUE target (revision 3) with `bypass`, to
    `chain` of table inet `table`; the rule asks for an acknowledgement, under `seq`."""
    info = _NFQ_INFO_V3.pack(queue, 1, NFQ_FLAG_BYPASS)
    target = _attr(NFTA_TARGET_NAME, b"NFQUEUE\0")
    target += _attr(NFTA_TARGET_REV, _U32.pack(NFQUEUE_REVISION)) + _attr(NFTA_TARGET_INFO, info)
    expression = _attr(NFTA_EXPR_NAME, b"target\0") + _nested(NFTA_EXPR_DATA, target)
    body = netlink.NFGENMSG.pack(NFPROTO_INET, 0, 0)
    body += _attr(NFTA_RULE_TABLE, table.encode() + b"\0")
    body += _attr(NFTA_RULE_CHAIN, chain.encode() + b"\0")
    body += _nested(NFTA_RULE_EXPRESSIONS, _nested(NFTA_LIST_ELEM, expression))
    batch = netlink.NFGENMSG.pack(0, 0, NFNL_SUBSYS_NFTABLES)
    flags = netlink.NLM_F_REQUEST | netlink.NLM_F_ACK | NLM_F_CREATE | NLM_F_APPEND
    return (
        netlink.message(NFNL_MSG_BATCH_BEGIN, netlink.NLM_F_REQUEST, seq, batch)
        + netlink.message(NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_NEWRULE, flags, seq, body)
        + netlink.message(NFNL_MSG_BATCH_END, netlink.NLM_F_REQUEST, seq, batch)
    )


def parse_ack(data: bytes, seq: int, what: str) -> bool:
    """Whether a reply datagram holds the acknowledgement of request `seq`; FirewallError
    when it holds an error instead."""
    messages, _ = netlink.split(data)
    for kind, reply_seq, body in messages:
        if kind != netlink.NLMSG_ERROR or reply_seq != seq:
            continue
        code = netlink.error_code(body)
        if code:
            raise FirewallError(f"{what}: {_error_text(code)}")
        return True
    return False


def _attr(kind: int, value: bytes) -> bytes:
    return netlink.attribute(kind, value)


def _nested(kind: int, value: bytes) -> bytes:
    return netlink.attribute(kind | NLA_F_NESTED, value)


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


def dump_request(kind: int, seq: int, table: str) -> bytes:
    """A dump request for the chains, rules or sets (`kind`) of table inet `table` (their
    TABLE attribute is 1 in each, and the kernel filters the dump by it)."""
    body = netlink.NFGENMSG.pack(NFPROTO_INET, 0, 0)
    body += netlink.attribute(NFTA_CHAIN_TABLE, table.encode() + b"\0")
    return netlink.message(NFNL_SUBSYS_NFTABLES << 8 | kind, _DUMP, seq, body)


_DUMP = netlink.NLM_F_REQUEST | netlink.NLM_F_DUMP


def parse_dump(data: bytes, table: str, seq: int, what: str) -> tuple[list[bytes], bool]:
    """(the attributes of each object, whether the dump is over) from one reply datagram to
    request `seq`. FirewallError when the kernel answered with an error."""
    found: list[bytes] = []
    for kind, answered, body in netlink.split(data)[0]:
        if answered != seq:
            continue
        if kind == netlink.NLMSG_DONE:
            return found, True
        if kind == netlink.NLMSG_ERROR:
            if code := netlink.error_code(body):
                raise FirewallError(f"{what}: {_error_text(code)}")
            return found, True
        found.append(body[netlink.NFGENMSG.size :])
    return found, False


def _shape_of(kind: int, body: bytes) -> bytes:
    """What of a chain, set or rule dump message makes its shape, as bytes."""
    attrs = netlink.attributes(body) or {}
    keep = {
        NFT_MSG_GETCHAIN: (NFTA_CHAIN_NAME, NFTA_CHAIN_HOOK, NFTA_CHAIN_POLICY, NFTA_CHAIN_TYPE),
        NFT_MSG_GETSET: (NFTA_SET_NAME, NFTA_SET_FLAGS),
        NFT_MSG_GETRULE: (NFTA_RULE_CHAIN,),
    }[kind]
    parts = [bytes([kind])] + [attrs.get(a, b"-") for a in keep]
    if kind == NFT_MSG_GETRULE:
        parts += _expressions(attrs.get(NFTA_RULE_EXPRESSIONS, b""))
    return b"|".join(parts) + b"\n"


def _expressions(data: bytes) -> list[bytes]:
    """Each expression of a rule: its name and data, stateful ones (counters) by name only."""
    parts = []
    for elem in _each_attribute(data):
        attrs = netlink.attributes(elem) or {}
        name = attrs.get(NFTA_EXPR_NAME, b"").rstrip(b"\0")
        parts.append(name if name in STATEFUL else name + b":" + attrs.get(NFTA_EXPR_DATA, b""))
    return parts


def _each_attribute(data: bytes) -> list[bytes]:
    """The values of a list of attributes, in order, repeated types included."""
    values = []
    offset = 0
    while len(data) - offset >= netlink.NLATTR.size:
        length, _ = netlink.NLATTR.unpack_from(data, offset)
        if length < netlink.NLATTR.size or offset + length > len(data):
            break
        values.append(data[offset + netlink.NLATTR.size : offset + length])
        offset += netlink.align(length)
    return values


def elements_request(seq: int, table: str, name: str) -> bytes:
    """A dump request for the elements of set `name` of table inet `table`."""
    body = netlink.NFGENMSG.pack(NFPROTO_INET, 0, 0)
    body += netlink.attribute(NFTA_SET_ELEM_LIST_TABLE, table.encode() + b"\0")
    body += netlink.attribute(NFTA_SET_ELEM_LIST_SET, name.encode() + b"\0")
    return netlink.message(NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_GETSETELEM, _DUMP, seq, body)


def parse_element_count(data: bytes, seq: int, what: str) -> tuple[int, bool]:
    """(elements in one reply datagram to request `seq`, the ends of intervals left out;
    whether the dump is over). FirewallError when the kernel answered with an error."""
    count = 0
    for body in _answers(data, seq, what):
        if body is None:
            return count, True
        attrs = netlink.attributes(body, netlink.NFGENMSG.size) or {}
        for element in _each_attribute(attrs.get(NFTA_SET_ELEM_LIST_ELEMENTS, b"")):
            flags = (netlink.attributes(element) or {}).get(NFTA_SET_ELEM_FLAGS)
            end = flags is not None and len(flags) == 4 and _U32.unpack(flags)[0] & 1
            count += 0 if end else 1
    return count, False


def _answers(data: bytes, seq: int, what: str) -> list[bytes | None]:
    """The bodies of the messages answering `seq`, None for the end of the dump."""
    found: list[bytes | None] = []
    for kind, answered, body in netlink.split(data)[0]:
        if answered != seq:
            continue
        if kind in (netlink.NLMSG_DONE, netlink.NLMSG_ERROR):
            if kind == netlink.NLMSG_ERROR and (code := netlink.error_code(body)):
                raise FirewallError(f"{what}: {_error_text(code)}")
            found.append(None)
            return found
        found.append(body)
    return found
