"""The nftables backend's periodic check without a kernel, over stand-ins for libnftables and
the netlink reader that record what is asked: the check reads the ban sets' elements only
(never the whole table, whose watch and block sets can hold 65,536 elements each), and a
rotation does not take damage done before it as the new baseline."""

from __future__ import annotations

from collections.abc import Sequence

from porttrap.config.loader import load_text
from porttrap.errors import FirewallError
from porttrap.firewall.kernel import JsonCommand, Nft
from porttrap.firewall.nftables import BAN_SETS, NftablesBackend
from porttrap.firewall.objects import NftObjects
from porttrap.sensorspec import SensorState, spec_from_config

NOW = 1_800_000_000.0
TABLE = "porttrap"
ADVANCED = '[traps]\nmode = "advanced"\n'


HELD = {  # one ban in each ban set
    "ban_v4": "192.0.2.7",
    "ban_net_v4": {"prefix": {"addr": "192.0.2.0", "len": 24}},
    "ban_v6": "2001:db8::7",
    "ban_net_v6": {"prefix": {"addr": "2001:db8::", "len": 48}},
}


class ListingNft(Nft):
    """Stands in for libnftables: keeps each batch run and each listing asked; each ban set
    holds its ban of `HELD`, and a set named in `missing` does not exist."""

    def __init__(self, missing: frozenset[str] = frozenset()) -> None:  # no libnftables here
        self.listed: list[JsonCommand] = []
        self.missing = missing
        self.batches: list[list[str]] = []

    def run(self, commands: Sequence[str]) -> None:
        self.batches.append(list(commands))

    def list_json(self, what: JsonCommand) -> list[JsonCommand]:
        self.listed.append(what)
        name = what["set"]["name"]  # a KeyError if anything but a set is listed
        if name in self.missing:
            raise FirewallError("nftables refused listing ...: No such file or directory")
        return [{"set": {"name": name, "elem": [HELD[name]]}}]


class Objects(NftObjects):
    """Stands in for the netlink reader: the table exists; its digest follows the batches
    `nft` ran and `damage` (which a test sets to damage the table); keeps the sets counted."""

    def __init__(self, nft: ListingNft) -> None:  # no socket here
        self.nft = nft
        self.damage = ""
        self.counted: list[str] = []

    def table_exists(self, table: str) -> bool:
        return table == TABLE

    def shape(self, table: str) -> str:
        return f"{self.damage} after {len(self.nft.batches)} batches"

    def count_elements(self, table: str, sets: list[str]) -> int:
        self.counted += sets
        return len(sets)


def advanced(nft: ListingNft) -> tuple[NftablesBackend, Objects]:
    """A backend set up in advanced mode: the watch (clients, peers) and block sets exist."""
    objects = Objects(nft)
    backend = NftablesBackend(TABLE, nft=nft, objects=objects)
    backend.setup([], NOW, SensorState(spec_from_config(load_text(ADVANCED, None)), {}))
    created = "\n".join(nft.batches[0])
    assert "clients_v4" in created and "peers_v6" in created and "block" in created
    return backend, objects


def test_the_check_lists_each_ban_set_and_nothing_else() -> None:
    nft = ListingNft()
    found = advanced(nft)[0].inspect(entries=True)
    assert nft.listed == [
        {"set": {"family": "inet", "table": TABLE, "name": name}} for name in BAN_SETS
    ]
    assert found.damaged is None and found.entries is not None
    assert sorted(str(entry.target) for entry in found.entries) == [
        "192.0.2.0/24",
        "192.0.2.7/32",
        "2001:db8::/48",
        "2001:db8::7/128",
    ]


def test_the_count_reads_the_ban_sets_only() -> None:
    nft = ListingNft()
    backend, objects = advanced(nft)
    found = backend.inspect(count=True)
    assert objects.counted == BAN_SETS
    assert found.count == len(BAN_SETS)
    assert nft.listed == []


def test_a_missing_ban_set_holds_no_bans() -> None:
    nft = ListingNft(missing=frozenset({"ban_net_v4", "ban_net_v6"}))
    entries = NftablesBackend(TABLE, nft=nft, objects=Objects(nft)).entries()
    assert sorted(str(entry.target) for entry in entries) == ["192.0.2.7/32", "2001:db8::7/128"]


def test_a_rotation_keeps_damage_done_before_it_for_the_next_check() -> None:
    nft = ListingNft()
    backend, objects = advanced(nft)
    objects.damage = "a rule deleted by hand"
    before = len(nft.batches)
    backend.rotate("b")
    assert len(nft.batches) == before + 1
    assert backend.inspect().damaged is not None


def test_a_rotation_of_a_whole_table_takes_its_own_change_as_written() -> None:
    nft = ListingNft()
    backend, _ = advanced(nft)
    assert backend.inspect().damaged is None
    backend.rotate("b")
    assert backend.inspect().damaged is None
