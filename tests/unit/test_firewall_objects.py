"""Reading nf_tables over netlink (firewall/objects.py): requests and replies as bytes, and
NftObjects' exchange with a stand-in kernel at the other end of a socketpair."""

from __future__ import annotations

import contextlib
import errno
import socket
import struct
import threading
from collections.abc import Callable, Iterator

import pytest

from porttrap import netlink
from porttrap.errors import FirewallError
from porttrap.firewall import objects
from porttrap.firewall.kernel import Nft

NEWTABLE = objects.NFNL_SUBSYS_NFTABLES << 8 | objects.NFT_MSG_NEWTABLE


def counter_message(table: str, name: str, packets: int, seq: int = 1) -> bytes:
    data = netlink.attribute(objects.NFTA_COUNTER_PACKETS, struct.pack("!Q", packets))
    body = struct.pack("!BBH", objects.NFPROTO_INET, 0, 0)
    body += netlink.attribute(objects.NFTA_OBJ_TABLE, table.encode() + b"\0")
    body += netlink.attribute(objects.NFTA_OBJ_NAME, name.encode() + b"\0")
    body += netlink.attribute(objects.NFTA_OBJ_DATA | 0x8000, data)  # NLA_F_NESTED
    kind = objects.NFNL_SUBSYS_NFTABLES << 8 | 20  # NFT_MSG_NEWOBJ, as dumps answer
    return netlink.message(kind, 0, seq, body)


def done(seq: int = 1) -> bytes:
    return netlink.message(netlink.NLMSG_DONE, 0, seq, b"\0" * 4)


def error(code: int, seq: int = 1) -> bytes:
    """An NLMSG_ERROR with errno `code` (0: an ack), then the request's header, as the kernel
    sends it."""
    return netlink.message(netlink.NLMSG_ERROR, 0, seq, struct.pack("=i", -code) + b"\0" * 16)


def table_message(seq: int = 1) -> bytes:
    body = struct.pack("!BBH", objects.NFPROTO_INET, 0, 0)
    body += netlink.attribute(objects.NFTA_TABLE_NAME, b"porttrap\0")
    return netlink.message(NEWTABLE, 0, seq, body)


# --- counters ---


def test_a_dump_reply_gives_packets_per_counter_of_the_table_only() -> None:
    data = counter_message("porttrap", "block_a", 7) + counter_message("other", "quiet", 3)
    assert objects.parse_counters(data, "porttrap", 1) == ({"block_a": 7}, False)
    assert objects.parse_counters(counter_message("porttrap", "quiet", 2**40) + done(),
                                  "porttrap", 1) == ({"quiet": 2**40}, True)  # fmt: skip


def test_a_reply_to_another_request_is_left_out() -> None:
    late = counter_message("porttrap", "block_a", 99, seq=4) + done(seq=4)
    assert objects.parse_counters(late, "porttrap", 5) == ({}, False)
    assert objects.parse_counters(late + counter_message("porttrap", "block_a", 7, seq=5),
                                  "porttrap", 5) == ({"block_a": 7}, False)  # fmt: skip
    assert objects.parse_counters(error(errno.EBUSY, seq=4), "porttrap", 5) == ({}, False)


def test_an_error_reply_names_the_errno_and_says_what_was_read() -> None:
    with pytest.raises(FirewallError) as raised:
        objects.parse_counters(error(errno.EINVAL), "porttrap", 1)
    assert str(raised.value) == "reading counters of table inet porttrap: EINVAL (Invalid argument)"


def test_a_refusal_for_want_of_cap_net_admin_says_so() -> None:
    with pytest.raises(FirewallError) as raised:
        objects.parse_counters(error(errno.EPERM), "porttrap", 1)
    assert str(raised.value) == (
        "reading counters of table inet porttrap: EPERM (Operation not permitted): it needs "
        "CAP_NET_ADMIN (run porttrap as root)"
    )


def test_the_counters_request_asks_for_counter_objects_of_one_table() -> None:
    messages, bad = netlink.split(objects.counters_request(5, "porttrap"))
    assert bad == 0
    [(kind, seq, body)] = messages
    assert (kind, seq) == (objects.NFNL_SUBSYS_NFTABLES << 8 | objects.NFT_MSG_GETOBJ, 5)
    flags = netlink.NLMSGHDR.unpack_from(objects.counters_request(5, "porttrap"))[2]
    assert flags == netlink.NLM_F_REQUEST | netlink.NLM_F_DUMP
    attrs = netlink.attributes(body, 4) or {}
    assert attrs[objects.NFTA_OBJ_TABLE] == b"porttrap\0"
    assert attrs[objects.NFTA_OBJ_TYPE] == struct.pack("!I", objects.NFT_OBJECT_COUNTER)


# --- the table ---


def test_the_table_request_asks_for_one_table_without_an_ack() -> None:
    request = objects.table_request(9, "porttrap")
    [(kind, seq, body)], bad = netlink.split(request)
    assert (kind, seq, bad) == (objects.NFNL_SUBSYS_NFTABLES << 8 | objects.NFT_MSG_GETTABLE, 9, 0)
    assert netlink.NLMSGHDR.unpack_from(request)[2] == netlink.NLM_F_REQUEST  # one reply, no ack
    assert (netlink.attributes(body, 4) or {})[objects.NFTA_TABLE_NAME] == b"porttrap\0"


@pytest.mark.parametrize(
    ("reply", "exists"),
    [
        (table_message(), True),
        (error(0), True),
        (error(errno.ENOENT), False),
        (done(), None),  # nothing that answers the question
        (table_message(seq=2) + error(errno.ENOENT, seq=2), None),
        (b"", None),
    ],
    ids=["description", "ack", "ENOENT", "done", "another-requests", "nothing"],
)
def test_the_table_reply_says_whether_it_exists(reply: bytes, exists: bool | None) -> None:
    assert objects.parse_table_reply(reply, "porttrap", 1) is exists


def test_a_table_lookup_error_names_the_errno() -> None:
    with pytest.raises(FirewallError) as raised:
        objects.parse_table_reply(error(errno.EAFNOSUPPORT), "porttrap", 1)
    assert str(raised.value) == (
        "looking up table inet porttrap: EAFNOSUPPORT (Address family not supported by protocol)"
    )


# --- NftObjects against a stand-in kernel ---


Answer = Callable[[int], list[bytes]]


class FakeKernel:
    """The kernel's end of a socketpair: answers the request with sequence number `seq` with
    the datagrams `answer(seq)` gives, and keeps the sequence numbers it saw. `answered` counts
    the answers sent whole."""

    def __init__(self, answer: Answer) -> None:
        self.end, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.objects = objects.NftObjects(theirs)
        self.seqs: list[int] = []
        self.answered = threading.Semaphore(0)
        self._answer = answer
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        with contextlib.suppress(ConnectionResetError):  # the reader closed with replies unread
            while request := self.end.recv(65536):  # b"": the reader closed its end
                [(_, seq, _)], _ = netlink.split(request)
                self.seqs.append(seq)
                for datagram in self._answer(seq):
                    self.end.send(datagram)
                self.answered.release()

    def close(self) -> None:
        self.objects.close()
        self._thread.join(timeout=5)
        self.end.close()


@pytest.fixture
def kernel() -> Iterator[Callable[[Answer], FakeKernel]]:
    made: list[FakeKernel] = []

    def make(answer: Answer) -> FakeKernel:
        made.append(FakeKernel(answer))
        return made[-1]

    yield make
    for fake in made:
        fake.close()


def test_counters_are_read_to_the_end_of_the_dump_with_a_new_seq_each_time(
    kernel: Callable[[Answer], FakeKernel],
) -> None:
    def answer(seq: int) -> list[bytes]:
        first = counter_message("porttrap", "block_a", seq, seq) + counter_message(
            "porttrap", "quiet", 2, seq
        )
        return [first, counter_message("porttrap", "reported", 3, seq), done(seq)]

    fake = kernel(answer)
    assert fake.objects.counters("porttrap") == {"block_a": 1, "quiet": 2, "reported": 3}
    assert fake.objects.counters("porttrap")["block_a"] == 2
    assert fake.seqs == [1, 2]


def test_the_late_answer_to_a_timed_out_request_is_not_taken_for_the_next_ones(
    kernel: Callable[[Answer], FakeKernel], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(objects, "TIMEOUT", 0.2)

    def answer(seq: int) -> list[bytes]:
        if seq == 1:
            return []  # too late: it comes with the answer to the next request
        late = counter_message("porttrap", "block_a", 99, 1) + done(1)
        return [late, counter_message("porttrap", "block_a", 7, seq) + done(seq)]

    fake = kernel(answer)
    with pytest.raises(FirewallError) as raised:
        fake.objects.counters("porttrap")
    assert str(raised.value) == (
        "reading counters of table inet porttrap: no answer from the kernel in 0.2 s"
    )
    assert fake.objects.counters("porttrap") == {"block_a": 7}


def test_what_an_earlier_request_left_unread_is_discarded_first(
    kernel: Callable[[Answer], FakeKernel], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(objects, "MAX_DATAGRAMS", 2)

    def answer(seq: int) -> list[bytes]:
        if seq == 1:  # a dump that runs on: the reader stops after MAX_DATAGRAMS
            return [counter_message("porttrap", "quiet", n, seq) for n in range(4)]
        return [table_message(seq)]

    fake = kernel(answer)
    with pytest.raises(FirewallError, match="the answer did not end within 2 datagrams"):
        fake.objects.counters("porttrap")
    assert fake.answered.acquire(timeout=5)  # all 4 sent: 2 wait unread
    assert fake.objects.table_exists("porttrap")  # left unread, the 2 would fill its 2 reads
    assert fake.seqs == [1, 2]


def test_a_table_lookup_through_the_reader(kernel: Callable[[Answer], FakeKernel]) -> None:
    fake = kernel(lambda seq: [error(errno.ENOENT, seq)] if seq == 1 else [table_message(seq)])
    assert not fake.objects.table_exists("porttrap")
    assert fake.objects.table_exists("porttrap")


def test_a_closed_reader_says_so(kernel: Callable[[Answer], FakeKernel]) -> None:
    fake = kernel(lambda seq: [done(seq)])
    fake.objects.close()
    with pytest.raises(FirewallError) as raised:
        fake.objects.table_exists("porttrap")
    assert str(raised.value) == "looking up table inet porttrap: EBADF (Bad file descriptor)"


# --- made together ---


class NoNft(Nft):
    def __init__(self) -> None:  # no libnftables here
        pass


def test_nft_and_the_reader_come_together_or_not_at_all() -> None:
    mine, other = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with other:
        reader, nft = objects.NftObjects(mine), NoNft()
        assert objects.made_here(nft, reader) == (nft, reader)
        with pytest.raises(TypeError, match="together"):
            objects.made_here(nft, None)
        with pytest.raises(TypeError, match="together"):
            objects.made_here(None, reader)
        reader.close()


def test_an_element_count_leaves_out_the_ends_of_intervals() -> None:
    """A dump of an interval set holds each range as a start and an end element."""

    def element(flags: int | None) -> bytes:
        key = netlink.attribute(1, netlink.attribute(1, bytes(4)))  # KEY { DATA_VALUE }
        extra = b"" if flags is None else netlink.attribute(3, struct.pack("!I", flags))
        return netlink.attribute(1, key + extra)  # LIST_ELEM

    elements = element(None) + element(1) + element(0) + element(1) + element(None)
    body = netlink.NFGENMSG.pack(1, 0, 0) + netlink.attribute(3, elements)
    kind = objects.NFNL_SUBSYS_NFTABLES << 8 | 12  # NFT_MSG_NEWSETELEM
    data = netlink.message(kind, 0, 7, body) + netlink.message(netlink.NLMSG_DONE, 0, 7, b"\0" * 4)
    assert objects.parse_element_count(data, 7, "counting") == (3, True)
    assert objects.parse_element_count(data, 8, "counting") == (0, False)  # another request's
