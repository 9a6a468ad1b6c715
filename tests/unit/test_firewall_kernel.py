"""The typed facade over libnftables: error text, batch summaries, capability check."""

from __future__ import annotations

import pytest

from porttrap.errors import FirewallError
from porttrap.firewall.kernel import Nft, describe, has_net_admin


class FakeContext:
    """Stands in for nftables.Nftables: answers `cmd` with a canned (rc, output, error)."""

    def __init__(self, rc: int, output: str = "", error: str = "") -> None:
        self.answer = (rc, output, error)
        self.sent: list[str] = []

    def cmd(self, text: str) -> tuple[int, str, str]:
        self.sent.append(text)
        return self.answer


def nft_answering(context: FakeContext, monkeypatch: pytest.MonkeyPatch) -> Nft:
    pytest.importorskip("nftables")
    nft = Nft()
    monkeypatch.setattr(nft, "_ctx", context)
    return nft


def elements(verb: str, name: str, count: int) -> str:
    return (
        f"{verb} element inet porttrap {name} {{ {', '.join(['192.0.2.1 timeout 1s'] * count)} }}"
    )


def test_describe_counts_elements_once_per_verb_and_set() -> None:
    batch = [
        "add table inet porttrap",
        "add set inet porttrap ban_v4 { type ipv4_addr; flags timeout; }",
        "add set inet porttrap ban_net_v4 { type ipv4_addr; flags interval,timeout; }",
        "add chain inet porttrap prerouting { type filter hook prerouting priority -350; }",
        "add rule inet porttrap prerouting ip saddr @ban_v4 drop",
        "add rule inet porttrap prerouting ip saddr @ban_net_v4 drop",
        elements("add", "ban_v4", 3),
        elements("delete", "ban_v4", 3),
        elements("add", "ban_v4", 2),
    ]
    assert describe(batch) == (
        "adding 3 elements to set ban_v4, deleting 3 elements from set ban_v4, "
        "adding table porttrap, adding 2 sets, adding chain prerouting, "
        "adding 2 rules in chain prerouting"
    )


def test_describe_is_short_for_many_sets() -> None:
    batch = [elements("add", f"s{i}", 1) for i in range(9)]
    assert describe(batch).endswith("adding 1 element to set s5 and 3 more")


def test_run_sends_one_batch_in_nft_syntax(monkeypatch: pytest.MonkeyPatch) -> None:
    context = FakeContext(0)
    nft = nft_answering(context, monkeypatch)
    nft.run(["add table inet porttrap", elements("add", "ban_v4", 2)])
    assert context.sent == [
        "add table inet porttrap\n"
        "add element inet porttrap ban_v4 { 192.0.2.1 timeout 1s, 192.0.2.1 timeout 1s }"
    ]


def test_list_json_sends_json_and_parses_output(monkeypatch: pytest.MonkeyPatch) -> None:
    context = FakeContext(0, '{"nftables": [{"metainfo": {}}, {"table": {"name": "t"}}]}')
    nft = nft_answering(context, monkeypatch)
    assert nft.list_json({"tables": None}) == [{"table": {"name": "t"}}]
    assert context.sent == ['{"nftables":[{"list":{"tables":null}}]}']


def test_run_error_says_what_was_attempted(monkeypatch: pytest.MonkeyPatch) -> None:
    command = "add element inet porttrap ban_net_v4 { 198.51.100.0/24, 192.0.2.0/24 timeout 1s }"
    culprit = " " * command.index("192.0.2.0/24") + "^" * len("192.0.2.0/24") + "\n"
    error = f"Error: interval overlaps with an existing one\n{command}\n{culprit}"
    nft = nft_answering(FakeContext(1, "", error), monkeypatch)
    with pytest.raises(FirewallError) as raised:
        nft.run([command])
    assert str(raised.value) == (
        "nftables refused adding 2 elements to set ban_net_v4: "
        "interval overlaps with an existing one"
    )


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        ("internal:0:0-0: Error: Could not process rule: No such file or directory\n\n",
         "Could not process rule: No such file or directory"),
        ("Error: syntax error, unexpected ip, expecting string\nadd table inet ip\n"
         "               ^^\nError: syntax error, unexpected ip, expecting string\n"
         "add table inet ip\n               ^^\nError: B\nadd table inet ip\n^^^\n",
         "syntax error, unexpected ip, expecting string; B"),
        ("something else\n\n", "something else"),
        ("", "no error text"),
    ],
)  # fmt: skip
def test_run_error_text_is_one_line(
    error: str, expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    nft = nft_answering(FakeContext(1, "", error), monkeypatch)
    with pytest.raises(FirewallError) as raised:
        nft.run(["add table inet porttrap"])
    assert str(raised.value) == f"nftables refused adding table porttrap: {expected}"


@pytest.mark.parametrize(
    ("capeff", "expected"),
    [("000001ffffffffff", True), ("0000000000001000", True), ("0000000000000fff", False)],
)
def test_has_net_admin_reads_capeff(capeff: str, expected: bool) -> None:
    status = f"Name:\tporttrap\nCapInh:\t0000000000000000\nCapEff:\t{capeff}\n"
    assert has_net_admin(status) is expected
    assert has_net_admin("Name:\tno caps line\n") is False
