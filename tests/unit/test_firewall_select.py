"""Making a backend by name and choosing one (`auto`) with fake support checks, the ipset
backend's support check with fake programs, and the exec helper with harmless programs (never a
firewall one)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from porttrap.errors import FirewallError
from porttrap.firewall import ipset, kernel, select
from porttrap.firewall.dryrun import DryRunBackend
from porttrap.firewall.exec import CommandFailed, Exec
from porttrap.firewall.ipset import IpsetBackend
from porttrap.firewall.nftables import NftablesBackend
from porttrap.firewall.registry import Check
from porttrap.testing import FakeClock

YES = (True, "fine here")


def refused(why: str) -> Check:
    return lambda: (False, why)


def checks(nftables: Check, ipset_check: Check) -> dict[str, Check]:
    return {"nftables": nftables, "ipset": ipset_check}


def make(name: str, supported: dict[str, Check], sensor: bool = False) -> object:
    return select.make_backend(name, "porttrap", FakeClock(), sensor, supported)


def test_auto_prefers_nftables_and_says_why(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, "porttrap"):
        backend = make("auto", checks(lambda: YES, lambda: YES))
    assert isinstance(backend, NftablesBackend)
    assert caplog.messages == ['event=backend-auto backend=nftables reason="fine here"']


def test_auto_falls_back_to_ipset_and_logs_the_refusal(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, "porttrap"):
        backend = make("auto", checks(refused("libnftables cannot be loaded"), lambda: YES))
    assert isinstance(backend, IpsetBackend)
    assert caplog.messages == [
        'event=backend-auto backend=ipset reason="fine here" '
        'refused="nftables: libnftables cannot be loaded"'
    ]


def test_auto_with_nothing_usable_lists_every_refusal() -> None:
    supported = checks(refused("no libnftables"), refused("ipset not found: apt-get install"))
    with pytest.raises(FirewallError) as raised:
        make("auto", supported)
    assert str(raised.value) == (
        'backend = "auto" found no firewall this host can run: nftables: no libnftables; '
        'ipset: ipset not found: apt-get install (or set backend = "dry-run" in [firewall] to '
        "only log what would be banned)"
    )


def test_auto_with_the_kernel_sensor_takes_only_nftables() -> None:
    calls: list[str] = []

    def ipset_check() -> tuple[bool, str]:
        calls.append("ipset")
        return YES

    assert isinstance(make("auto", checks(lambda: YES, ipset_check), sensor=True), NftablesBackend)
    with pytest.raises(FirewallError, match=r"stealth and advanced trap modes need nftables\): "):
        make("auto", checks(refused("no libnftables"), ipset_check), sensor=True)
    assert calls == []


def test_ipset_named_with_the_kernel_sensor_is_refused() -> None:
    with pytest.raises(FirewallError, match="need backend = \"nftables\", not 'ipset'"):
        make("ipset", checks(lambda: YES, lambda: YES), sensor=True)


def test_ipset_named_but_unsupported_says_why() -> None:
    with pytest.raises(FirewallError, match="'ipset' cannot run: iptables not found"):
        make("ipset", checks(lambda: YES, refused("iptables not found")))
    backend = make("ipset", checks(refused("no"), lambda: YES))
    assert isinstance(backend, IpsetBackend) and backend.names.chain == "porttrap"


def test_dry_run_needs_no_support_and_takes_no_sensor() -> None:
    backend = make("dry-run", checks(refused("no"), refused("no")))
    assert isinstance(backend, DryRunBackend) and backend.name == "dry-run"
    with pytest.raises(FirewallError, match="need backend = \"nftables\", not 'dry-run'"):
        make("dry-run", checks(lambda: YES, lambda: YES), sensor=True)


def test_an_unknown_backend_lists_the_choices() -> None:
    with pytest.raises(FirewallError) as raised:
        select.make_backend("iptables", "porttrap", FakeClock())
    assert str(raised.value) == (
        "unknown firewall backend 'iptables': choose one of nftables, ipset, auto, dry-run"
    )


def test_nftables_named_but_unsupported_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    """The registry's own check when no `supported` is given: kernel.is_supported."""
    monkeypatch.setattr(kernel, "is_supported", lambda: (False, "needs CAP_NET_ADMIN: run as root"))
    with pytest.raises(FirewallError) as raised:
        select.make_backend("nftables", "porttrap", FakeClock())
    assert str(raised.value) == (
        "firewall backend 'nftables' cannot run: needs CAP_NET_ADMIN: run as root (or set "
        'backend = "dry-run" in [firewall] to only log what would be banned)'
    )


# -- ipset.is_supported -----------------------------------------------------------------------

ROOT_STATUS = "Name:\tporttrap\nCapEff:\t000001ffffffffff\n"
USER_STATUS = "Name:\tporttrap\nCapEff:\t0000000000000000\n"


class Answers:
    """A runner that fails the commands starting with one of `failing`."""

    def __init__(self, failing: Sequence[str] = ()) -> None:
        self.failing = failing
        self.ran: list[str] = []

    def run(self, argv: Sequence[str], stdin: str | None = None) -> str:
        command = " ".join(argv)
        self.ran.append(command)
        if any(command.startswith(start) for start in self.failing):
            raise CommandFailed(
                argv, 1, "ipset v7.17: Kernel error received: Protocol not supported"
            )
        return ""


def supported(
    tmp_path: Path, runner: Answers, status: str = ROOT_STATUS, missing: Sequence[str] = ()
) -> tuple[bool, str]:
    path = tmp_path / "status"
    path.write_text(status)

    def which(program: str) -> str | None:
        return None if program in missing else f"/usr/sbin/{program}"

    return ipset.is_supported(runner, path, which)


def test_is_supported_when_everything_answers(tmp_path: Path) -> None:
    runner = Answers()
    assert supported(tmp_path, runner) == (
        True,
        "ipset and iptables found, CAP_NET_ADMIN held, ip_set and the raw and security tables "
        "usable",
    )
    assert runner.ran == [
        "ipset list -n",
        "iptables -w 5 -t raw -S",
        "iptables -w 5 -t security -S",
        "ip6tables -w 5 -t raw -S",
        "ip6tables -w 5 -t security -S",
    ]


def test_is_supported_names_the_missing_programs(tmp_path: Path) -> None:
    runner = Answers()
    ok, why = supported(tmp_path, runner, missing=["ipset", "ip6tables-restore"])
    assert not ok
    assert why == "ipset, ip6tables-restore not found: apt-get install ipset iptables"
    assert runner.ran == []


def test_is_supported_needs_cap_net_admin(tmp_path: Path) -> None:
    ok, why = supported(tmp_path, Answers(), status=USER_STATUS)
    assert not ok and "needs CAP_NET_ADMIN: run porttrap as root" in why


def test_is_supported_when_the_kernel_has_no_ip_set(tmp_path: Path) -> None:
    ok, why = supported(tmp_path, Answers(failing=["ipset"]))
    assert not ok
    assert "Protocol not supported: load the ip_set kernel module (modprobe ip_set)" in why
    ok, why = supported(tmp_path, Answers(failing=["ip6tables"]))
    assert not ok and why.endswith(": modprobe ip6table_raw")
    ok, why = supported(tmp_path, Answers(failing=["iptables -w 5 -t security"]))
    assert not ok and why.endswith(": modprobe iptable_security")


# -- exec --------------------------------------------------------------------------------------


def test_exec_passes_stdin_and_returns_stdout() -> None:
    echo = [sys.executable, "-c", "import sys; sys.stdout.write(sys.stdin.read().upper())"]
    assert Exec().run(echo, "add x\n") == "ADD X\n"


def test_exec_failure_carries_argv_and_stderr() -> None:
    argv = [sys.executable, "-c", "import sys; sys.stderr.write('Error in line 2: no\\n'); exit(3)"]
    with pytest.raises(CommandFailed) as raised:
        Exec().run(argv)
    assert raised.value.argv == tuple(argv)
    assert raised.value.returncode == 3
    assert raised.value.stderr == "Error in line 2: no\n"
    assert str(raised.value).endswith("failed (exit 3): Error in line 2: no")


def test_exec_in_a_namespace_prefixes_ip_netns_exec() -> None:
    assert Exec(netns="pt-1").argv(["ipset", "list", "-n"]) == [
        "ip", "netns", "exec", "pt-1", "ipset", "list", "-n",
    ]  # fmt: skip
    assert Exec().argv(["ipset", "list", "-n"]) == ["ipset", "list", "-n"]


def test_exec_of_a_missing_program_says_what_to_install() -> None:
    with pytest.raises(FirewallError, match=r"/nonexistent/ipset is not installed .*ipset$"):
        Exec().run(["/nonexistent/ipset", "list"])
    with pytest.raises(FirewallError, match=r"apt-get install iptables$"):
        Exec().run(["/nonexistent/ip6tables-restore"])


def test_exec_kills_what_runs_too_long() -> None:
    with pytest.raises(FirewallError, match=r"did not finish within 0\.2s and was killed"):
        Exec(timeout=0.2).run([sys.executable, "-c", "import time; time.sleep(30)"])


def test_exec_logs_the_argv_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, "porttrap"):
        Exec().run([sys.executable, "-c", "pass"], "a\nb\n")
    assert caplog.messages == [f'event=exec argv="{sys.executable} -c pass" stdin_lines=2']
