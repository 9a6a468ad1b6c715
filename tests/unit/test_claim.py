"""porttrap.firewall.claim: one owner per table. Abstract unix sockets only (no firewall is
touched), each test with a table name of its own."""

from __future__ import annotations

import asyncio
import os
import secrets

import pytest

from porttrap.errors import FirewallError
from porttrap.firewall import claim
from porttrap.firewall.claim import Claim


@pytest.fixture
def table() -> str:
    return f"t{secrets.token_hex(6)}"


def test_a_second_claim_is_refused_naming_the_holder_until_the_first_is_released(
    table: str,
) -> None:
    first = Claim("nftables", table)
    assert claim.holder("nftables", table) == (os.getpid(), os.geteuid())
    with pytest.raises(FirewallError) as caught:
        Claim("nftables", table)
    assert (
        f"the nftables table inet {table} in this network namespace is owned by another "
        f"porttrap, PID {os.getpid()}; porttrap changed nothing"
    ) in str(caught.value)
    Claim("ipset", table).release()  # another backend's objects: another claim
    first.release()
    assert claim.holder("nftables", table) is None
    with Claim("nftables", table):
        pass


def test_dry_run_claims_nothing(table: str) -> None:
    with claim.claim("dry-run", table) as held, claim.claim("dry-run", table) as again:
        assert held is None and again is None


def test_the_holder_answers_so_that_asking_never_finds_its_queue_full(table: str) -> None:
    async def ask_many() -> list[tuple[int, int] | None]:
        held = Claim("nftables", table)
        held.answer(asyncio.get_running_loop())
        found = []
        for _ in range(100):  # far more than the backlog
            found.append(claim.holder("nftables", table))
            await asyncio.sleep(0)  # the loop accepts and closes
        held.release()
        return found

    assert set(asyncio.run(ask_many())) == {(os.getpid(), os.geteuid())}
