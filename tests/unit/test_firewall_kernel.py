"""The typed facade over libnftables: error text, batch summaries, capability check."""

from __future__ import annotations

from typing import Any

import pytest

from porttrap.errors import FirewallError
from porttrap.firewall.kernel import Nft, describe, has_net_admin

WHERE = {"family": "inet", "table": "porttrap"}


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


def elements(verb: str, name: str, count: int) -> dict[str, Any]:
    return {verb: {"element": {**WHERE, "name": name, "elem": ["192.0.2.1"] * count}}}


def test_describe_counts_elements_once_per_verb_and_set() -> None:
    batch: list[dict[str, Any]] = [
        {"add": {"table": {"family": "inet", "name": "porttrap"}}},
        {"add": {"set": {**WHERE, "name": "ban_v4"}}},
        {"add": {"set": {**WHERE, "name": "ban_v6"}}},
        {"add": {"rule": {**WHERE, "chain": "prerouting", "expr": []}}},
        {"add": {"rule": {**WHERE, "chain": "prerouting", "expr": []}}},
        elements("add", "ban_v4", 3),
        elements("delete", "ban_v4", 3),
        elements("add", "ban_v4", 3),
    ]
    assert describe(batch) == (
        "adding 3 elements to set ban_v4, deleting 3 elements from set ban_v4, "
        "adding table porttrap, adding 2 sets, adding 2 rules in chain prerouting"
    )


def test_describe_is_short_for_many_sets() -> None:
    batch = [elements("add", f"s{i}", 1) for i in range(9)]
    assert describe(batch).endswith("adding 1 element to set s5 and 3 more")


def test_run_sends_one_batch_and_parses_output(monkeypatch: pytest.MonkeyPatch) -> None:
    context = FakeContext(0, '{"nftables": [{"metainfo": {}}, {"table": {"name": "t"}}]}')
    nft = nft_answering(context, monkeypatch)
    assert nft.list_json({"tables": None}) == [{"table": {"name": "t"}}]
    assert context.sent == ['{"nftables":[{"list":{"tables":null}}]}']


def test_run_error_says_what_was_attempted(monkeypatch: pytest.MonkeyPatch) -> None:
    error = "internal:0:0-0: Error: Could not process rule: No such file or directory\n\n"
    nft = nft_answering(FakeContext(1, "", error), monkeypatch)
    with pytest.raises(FirewallError) as raised:
        nft.run([elements("delete", "ban_v4", 2)])
    assert str(raised.value) == (
        "nftables refused deleting 2 elements from set ban_v4: "
        "Could not process rule: No such file or directory"
    )


@pytest.mark.parametrize(
    ("capeff", "expected"),
    [("000001ffffffffff", True), ("0000000000001000", True), ("0000000000000fff", False)],
)
def test_has_net_admin_reads_capeff(capeff: str, expected: bool) -> None:
    status = f"Name:\tporttrap\nCapInh:\t0000000000000000\nCapEff:\t{capeff}\n"
    assert has_net_admin(status) is expected
    assert has_net_admin("Name:\tno caps line\n") is False
