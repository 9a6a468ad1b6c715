"""Reload: what may change while running and what needs a restart; the policy keeps its state
under new rules; trap sockets that stay are kept; the daemon refuses a bad file and keeps the
one it runs (fakes for the kernel and the store)."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import replace
from ipaddress import ip_address, ip_network
from pathlib import Path

import pytest

from ports import free_ports
from porttrap.config.loader import load_text
from porttrap.config.schema import BanPolicy, Config, KernelSensor, Trap
from porttrap.core import reload
from porttrap.core.events import Started
from porttrap.daemon.shell import Shell
from porttrap.daemon.wiring import make_shell
from porttrap.errors import PorttrapError, RemoteConfigError
from porttrap.model import Hit, Outcome, Proto
from porttrap.policy import Policy, Protection
from porttrap.sensors.sockets import SocketTraps
from porttrap.testing import FakeClock, MemoryFirewall, MemoryStore
from waiting import eventually

# respond = "command" needs an action that runs on a ban (config.protection)
ON_BAN = '\n[[actions.command]]\nrun = ["/bin/true"]\n'

T0 = 1_800_000_000.0
NFLOG = KernelSensor().nflog_group
V4 = ipaddress.IPv4Address("127.0.0.1")


def cfg(text: str) -> Config:
    return load_text(text, None)


CONNECT = '[traps]\nmode = "connect"\n'  # the mode these tests start from


# -- what a reload may change ------------------------------------------------------------


def test_changed_names_the_sections_that_differ() -> None:
    old = cfg('[traps]\ntcp = ["23"]\n')
    new = cfg('[traps]\ntcp = ["24"]\n[allow]\naddresses = ["192.0.2.9"]\n')
    assert reload.changed(old, new) == ["traps", "allow"]
    assert reload.changed(old, replace(old, source=Path("/elsewhere.toml"))) == []


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ('state_dir = "/srv/porttrap"\n', "state_dir: /var/lib/porttrap -> /srv/porttrap"),
        ('[firewall]\nbackend = "ipset"\n', "[firewall] backend: nftables -> ipset"),
        ('[firewall]\ntable = "pt2"\n', "[firewall] table: porttrap -> pt2"),
        ('[traps]\nmode = "stealth"\n', "the kernel sensor would be turned on"),
    ],
)
def test_what_needs_a_restart_is_named(text: str, found: str) -> None:
    new = text if "[traps]" in text else text + CONNECT
    (problem,) = reload.needs_restart(cfg(CONNECT), cfg(new))
    assert found in problem


def test_kernel_settings_need_a_restart_only_for_group_and_queue() -> None:
    old = cfg('[traps]\nmode = "stealth"\n')
    new = cfg('[traps]\nmode = "stealth"\n[kernel]\nnflog_group = 7\nblock_time = "2m"\n')
    assert reload.needs_restart(old, new) == [f"[kernel] nflog_group: {NFLOG} -> 7"]
    assert reload.kernel_changed(old, new)  # block_time is in the rules: rebuilt
    assert not reload.needs_restart(cfg(CONNECT), cfg(CONNECT + "[kernel]\nnflog_group = 7\n"))


def test_the_table_is_rebuilt_only_when_its_rules_or_respond_change() -> None:
    stealth = '[traps]\nmode = "stealth"\n'
    assert not reload.kernel_changed(cfg(stealth), cfg(stealth + '[ban]\ntime = "2h"\n'))
    assert reload.kernel_changed(cfg(stealth), cfg(stealth + 'tcp = ["23"]\n'))
    assert reload.kernel_changed(
        cfg(stealth), cfg(stealth + '[allow]\naddresses = ["192.0.2.0/24"]\n')
    )
    assert not reload.kernel_changed(cfg('[traps]\ntcp = ["23"]\n'), cfg('[traps]\ntcp = ["24"]\n'))
    # connect mode: the watch marks the datagrams to UDP traps, so their ports are in the table
    assert reload.kernel_changed(cfg('[traps]\nudp = ["161"]\n'), cfg('[traps]\nudp = ["162"]\n'))
    assert reload.kernel_changed(cfg(CONNECT), cfg(CONNECT + '[kernel]\nclient_time = "10m"\n'))
    respond = CONNECT + '[ban]\nrespond = "command"\n' + ON_BAN
    assert reload.kernel_changed(cfg(CONNECT), cfg(respond))


# -- the policy keeps its state ----------------------------------------------------------


def hit(at: float, source: str = "198.51.100.7", port: int = 23, kind: str = "connect") -> Hit:
    return Hit(T0 + at, ip_address(source), 40000, ip_address("203.0.113.1"), port, Proto.TCP,
               kind)  # fmt: skip


def test_escalation_and_recent_hits_survive_new_rules() -> None:
    policy = Policy(BanPolicy(time=60.0), (), Protection([]))
    first = policy.on_hit(hit(0), T0).ban
    assert first is not None and first.expires_at == T0 + 60
    assert policy.on_hit(hit(1, "198.51.100.8", kind="syn"), T0 + 1).outcome is Outcome.COUNTED

    unbans = policy.reconfigure(BanPolicy(time=600.0, confirm=3), (), Protection([]), T0 + 100)
    assert unbans == []
    second = policy.on_hit(hit(100), T0 + 100).ban  # the first ban expired at +60
    assert second is not None and second.ban_count == 2
    assert second.expires_at == T0 + 100 + 600 * 4  # base x n^2 with the new base
    # the forged-probe count goes on, and now needs 3 within the window
    assert policy.on_hit(hit(101, "198.51.100.8", kind="syn"), T0 + 101).outcome is Outcome.COUNTED
    verdict = policy.on_hit(hit(102, "198.51.100.8", kind="syn"), T0 + 102)
    assert verdict.outcome is Outcome.BANNED


def test_a_newly_allowed_address_is_unbanned_and_the_own_addresses_carry_over() -> None:
    policy = Policy(BanPolicy(), (), Protection([], own=[ip_address("203.0.113.1")]))
    assert policy.on_hit(hit(0), T0).ban is not None
    allowed = Protection([ip_network("198.51.100.0/24")])
    (unban,) = policy.reconfigure(BanPolicy(), (), allowed, T0 + 1)
    assert str(unban.target) == "198.51.100.7/32" and unban.reason.startswith("protected: ")
    assert policy.active(T0 + 1) == []
    assert allowed.own == {ip_address("203.0.113.1")}


def test_per_trap_ban_times_follow_the_new_traps() -> None:
    policy = Policy(BanPolicy(time=60.0), (), Protection([]))
    traps = (Trap(Proto.TCP, 23, ban=7200.0),)
    policy.reconfigure(BanPolicy(time=60.0), traps, Protection([]), T0)
    ban = policy.on_hit(hit(0), T0).ban
    assert ban is not None and ban.expires_at == T0 + 7200


# -- trap sockets --------------------------------------------------------------------------


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    async def bounded() -> None:
        await asyncio.wait_for(scenario(), 60)

    asyncio.run(bounded())


def test_sockets_that_stay_are_kept_and_the_others_closed_or_bound() -> None:
    keep, drop, add = free_ports(3)

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        traps = SocketTraps(
            [Trap(Proto.TCP, keep, address=V4), Trap(Proto.TCP, drop, address=V4)],
            lambda _hit: None,
            FakeClock(),
        )
        traps.start(loop)
        kept = next(item.sock for item in traps._listeners if item.port == keep)
        report = traps.update(
            loop,
            [Trap(Proto.TCP, keep, address=V4), Trap(Proto.TCP, add, address=V4)],
            b"hello\r\n",
        )
        assert sorted(t.port for t in report.set) == sorted([keep, add])
        assert next(item.sock for item in traps._listeners if item.port == keep) is kept
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", drop), timeout=5).close()
        with socket.create_connection(("127.0.0.1", keep), timeout=5) as client:
            client.setblocking(False)  # the loop, on this thread, accepts and sends the banner
            data = bytearray()

            def banner_read() -> bool:
                with contextlib.suppress(BlockingIOError):
                    data.extend(client.recv(16))
                return len(data) >= len(b"hello\r\n")

            await eventually(banner_read, what="the new banner")
            assert data == b"hello\r\n"
        traps.close()

    run(scenario)


def test_a_port_moving_from_one_address_to_all_is_closed_before_it_is_bound() -> None:
    (port,) = free_ports(1)

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        traps = SocketTraps([Trap(Proto.TCP, port, address=V4)], lambda _hit: None, FakeClock())
        traps.start(loop)
        report = traps.update(loop, [Trap(Proto.TCP, port)], b"")
        assert any(t.address == "0.0.0.0" and t.port == port for t in report.set)
        traps.close()

    run(scenario)


# -- the daemon ---------------------------------------------------------------------------


def daemon_with(path: Path, text: str, state: Path) -> Shell:
    path.write_text(f'state_dir = "{state}"\n{text}')
    config = cfg(f'state_dir = "{state}"\n{text}')
    clock = FakeClock(T0)
    return make_shell(config, clock, MemoryStore(), MemoryFirewall(clock), config_path=path)


def test_the_daemon_refuses_a_bad_file_and_keeps_its_configuration(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="porttrap")
    path = tmp_path / "porttrap.toml"
    daemon = daemon_with(path, '[ban]\ntime = "1h"\n', tmp_path)
    running = daemon.config
    path.write_text('[ban]\ntime = "forever"\ntrigger = 0\n')

    with pytest.raises(RemoteConfigError) as refused:
        asyncio.run(daemon.reload())
    assert len(refused.value.problems) == 2
    assert daemon.config is running
    assert caplog.text.count("event=config-error") == 2
    assert "event=reload-refused" in caplog.text

    path.write_text(f'state_dir = "{tmp_path}"\n[firewall]\nbackend = "ipset"\n')
    with pytest.raises(PorttrapError, match="need a restart"):
        asyncio.run(daemon.reload())
    assert daemon.config is running


def test_the_daemon_applies_a_new_ban_policy_and_keeps_its_bans(tmp_path: Path) -> None:
    path = tmp_path / "porttrap.toml"
    daemon = daemon_with(path, '[ban]\ntime = "1h"\n', tmp_path)

    async def scenario() -> dict[str, object]:
        daemon.core.policy.ban([ip_network("192.0.2.7/32")], T0, permanent=True)
        path.write_text(f'state_dir = "{tmp_path}"\n[ban]\ntime = "2h"\n')
        return await daemon.reload()

    answer = asyncio.run(scenario())
    assert answer["changed"] == ["ban"]
    assert daemon.config.ban.time == 7200.0 and daemon.core.policy.policy.time == 7200.0
    (ban,) = daemon.core.policy.active(T0)
    assert ban.permanent and str(ban.target) == "192.0.2.7/32"


def test_a_reload_moves_the_metrics_endpoint_or_stays_where_it_was(tmp_path: Path) -> None:
    path = tmp_path / "porttrap.toml"
    daemon = daemon_with(path, "", tmp_path)
    first, taken = free_ports(2)

    def scrape(port: int) -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
            return b"".join(iter(lambda: sock.recv(65536), b""))

    async def scenario() -> None:
        path.write_text(f'state_dir = "{tmp_path}"\n[metrics]\nlisten = "127.0.0.1:{first}"\n')
        assert (await daemon.reload())["changed"] == ["metrics"]
        assert b"porttrap_hits_total" in await asyncio.to_thread(scrape, first)
        with socket.create_server(("127.0.0.1", taken)):  # someone else holds the new port
            path.write_text(f'state_dir = "{tmp_path}"\n[metrics]\nlisten = "127.0.0.1:{taken}"\n')
            with pytest.raises(PorttrapError, match=str(taken)):
                await daemon.reload()
        assert daemon.config.metrics.listen is not None
        assert daemon.config.metrics.listen.port == first
        assert b"200 OK" in await asyncio.to_thread(scrape, first)  # still served there
        await daemon.metrics.close()

    run(scenario)


def test_a_kernel_refusal_puts_back_the_metrics_endpoint_the_reload_had_moved(
    tmp_path: Path,
) -> None:
    """The reload moves the metrics listener first, then the kernel refuses the new table (a
    changed respond rebuilds it): the listener goes back, and nothing of the new file stays."""
    first, second = free_ports(2)
    path = tmp_path / "porttrap.toml"
    daemon = daemon_with(path, f'{CONNECT}[metrics]\nlisten = "127.0.0.1:{first}"\n', tmp_path)
    running = daemon.config

    def serves(port: int) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                sock.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
                return b"200 OK" in b"".join(iter(lambda: sock.recv(65536), b""))
        except OSError:
            return False

    async def scenario() -> None:
        daemon.feed(Started(frozenset(), []))
        await daemon.metrics.start(running.metrics.listen)
        assert await asyncio.to_thread(serves, first)
        path.write_text(
            f'state_dir = "{tmp_path}"\n{CONNECT}[metrics]\nlisten = "127.0.0.1:{second}"\n'
            '[ban]\nrespond = { udp = "command" }\n' + ON_BAN
        )
        assert isinstance(daemon.firewall, MemoryFirewall)
        daemon.firewall.fail_next()
        with pytest.raises(PorttrapError, match="simulated"):
            await daemon.reload()
        assert daemon.config is running
        assert await asyncio.to_thread(serves, first)  # back where it was
        assert not await asyncio.to_thread(serves, second)
        await daemon.metrics.close()

    run(scenario)
