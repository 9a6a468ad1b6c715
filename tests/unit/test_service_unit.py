"""The unit file's text: the lines systemd acts on, and the capabilities and writable paths it
derives from the configuration (state_dir, log files, hosts.deny, backend)."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import pytest

from porttrap.config import loader as config_mod
from porttrap.config.schema import Config
from porttrap.service import unit
from porttrap.service.template import DEFAULT_CONFIG

EXE = Path("/opt/porttrap/venv/bin/porttrap")


def cfg(text: str = "") -> Config:
    return config_mod.load_text(text, None)


def directives(text: str) -> list[str]:
    """The unit's `Key=value` lines, comments and blank lines left out."""
    return [line for line in text.splitlines() if line and not line.startswith(("#", "["))]


def values(text: str, key: str) -> list[str]:
    return [line.split("=", 1)[1] for line in directives(text) if line.startswith(f"{key}=")]


def test_default_config_gives_the_least_privileged_unit() -> None:
    text = unit.render(EXE, unit.sandbox(cfg()))
    assert values(text, "Type") == ["notify"]
    assert values(text, "NotifyAccess") == ["main"]
    assert values(text, "ExecStartPre") == [f"{EXE} check-config -c /etc/porttrap/porttrap.toml"]
    assert values(text, "ExecStart") == [f"{EXE} run -c /etc/porttrap/porttrap.toml"]
    assert values(text, "ExecReload") == [f"{EXE} reload -c /etc/porttrap/porttrap.toml"]
    assert values(text, "WatchdogSec") == ["30s"]
    assert values(text, "Restart") == ["on-failure"]
    assert values(text, "After") == ["network-online.target nftables.service"]
    assert values(text, "CapabilityBoundingSet") == ["CAP_NET_ADMIN CAP_NET_BIND_SERVICE"]
    assert values(text, "StateDirectory") == ["porttrap"]
    assert values(text, "StateDirectoryMode") == ["0700"]
    assert values(text, "ConfigurationDirectory") == ["porttrap"]
    assert values(text, "ReadWritePaths") == []  # nothing but the state directory
    assert values(text, "ProtectSystem") == ["strict"]
    assert values(text, "ReadOnlyPaths") == ["/run"]
    assert values(text, "RestrictAddressFamilies") == ["AF_UNIX AF_INET AF_INET6 AF_NETLINK"]
    assert values(text, "SystemCallFilter") == ["@system-service", "~@privileged @resources"]
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "PrivateDevices",
                "ProtectKernelTunables", "ProtectKernelModules", "ProtectKernelLogs",
                "ProtectControlGroups", "ProtectClock", "ProtectHostname", "RestrictNamespaces",
                "LockPersonality", "RestrictRealtime", "RestrictSUIDSGID",
                "MemoryDenyWriteExecute"):  # fmt: skip
        assert values(text, key) == ["yes"], key
    assert values(text, "UMask") == ["0077"]
    assert values(text, "WantedBy") == ["multi-user.target"]
    assert "AmbientCapabilities" not in text  # root: the bounding set is what it keeps


def test_the_unit_says_when_install_service_must_run_again() -> None:
    text = unit.render(EXE, unit.sandbox(cfg()))
    header = [line for line in text.splitlines() if line.startswith("#")]
    assert "install-service --force" in " ".join(header)
    assert "state_dir" in " ".join(header)


def test_a_state_dir_elsewhere_is_made_writable_instead_of_a_state_directory() -> None:
    box = unit.sandbox(cfg('state_dir = "/srv/porttrap"\n'))
    assert box.state_directory is None
    assert box.read_write == (Path("/srv/porttrap"),)
    text = unit.render(EXE, box)
    assert values(text, "ReadWritePaths") == ["/srv/porttrap"]
    assert values(text, "StateDirectory") == []


def test_a_state_dir_deeper_under_var_lib_is_still_a_state_directory() -> None:
    box = unit.sandbox(cfg('state_dir = "/var/lib/porttrap/../scanners/gw1"\n'))
    assert box.state_directory == "scanners/gw1"
    assert box.read_write == ()


def test_log_files_and_hosts_deny_make_their_directories_writable() -> None:
    box = unit.sandbox(cfg(
        'state_dir = "/srv/pt"\n'
        '[[log.output]]\nto = "stderr"\n'
        '[[log.output]]\nto = "/var/log/porttrap/porttrap.json"\nformat = "json"\n'
        '[[log.output]]\nto = "/var/log/porttrap/history.log"\nformat = "portsentry-history"\n'
        '[[log.output]]\nto = "/srv/pt/inside-state.log"\n'
        '[actions.hosts_deny]\nfile = "/etc/hosts.deny"\n'
    ))  # fmt: skip
    # the hosts.deny file is replaced by a rename, which needs its directory
    assert box.read_write_if_present == (Path("/etc"), Path("/var/log/porttrap"))
    text = unit.render(EXE, box)
    # a missing log directory is skipped by systemd: porttrap's own error then says why
    assert values(text, "ReadWritePaths") == ["/srv/pt -/etc -/var/log/porttrap"]


@pytest.mark.parametrize("backend", ["ipset", "auto"])
def test_the_ipset_backend_adds_what_iptables_legacy_needs(backend: str) -> None:
    box = unit.sandbox(cfg(f'[firewall]\nbackend = "{backend}"\n'))
    assert box.capabilities == ("CAP_NET_ADMIN", "CAP_NET_BIND_SERVICE", "CAP_NET_RAW")
    text = unit.render(EXE, box)
    assert values(text, "ExecStartPre") == [
        f"{EXE} check-config -c /etc/porttrap/porttrap.toml",
        "+/usr/bin/touch /run/xtables.lock",  # outside the sandbox: /run is read-only in it
    ]


@pytest.mark.parametrize("backend", ["nftables", "dry-run"])
def test_other_backends_need_neither(backend: str) -> None:
    box = unit.sandbox(cfg(f'[firewall]\nbackend = "{backend}"\n'))
    assert box.capabilities == unit.CAPABILITIES
    assert not box.xtables_lock
    assert "xtables" not in unit.render(EXE, box)


def test_paths_are_quoted_and_percent_escaped_for_systemd() -> None:
    assert unit.quote(Path("/opt/porttrap/bin/porttrap")) == "/opt/porttrap/bin/porttrap"
    assert unit.quote(Path("/opt/my tools/porttrap")) == '"/opt/my tools/porttrap"'
    assert unit.quote(Path("/srv/100%")) == "/srv/100%%"
    assert unit.quote(PurePosixPath('/a"b')) == '"/a\\"b"'
    with pytest.raises(ValueError, match="control characters"):
        unit.quote(Path("/srv/a\nb"))
    text = unit.render(Path("/opt/my tools/porttrap"), unit.sandbox(cfg()))
    assert values(text, "ExecStart") == [
        '"/opt/my tools/porttrap" run -c /etc/porttrap/porttrap.toml'
    ]


@pytest.mark.parametrize(
    ("path", "hidden"),
    [
        ("/home/alice/venv/bin/porttrap", "/home"),
        ("/root/.local/bin/porttrap", "/root"),
        ("/run/user/1000/porttrap", "/run/user"),
        ("/opt/porttrap/venv/bin/porttrap", None),
        ("/homes/porttrap", None),
        ("/usr/local/sbin/porttrap", None),
    ],
)
def test_what_protect_home_hides(path: str, hidden: str | None) -> None:
    found = unit.hidden_by_protect_home(Path(path))
    assert (str(found) if found else None) == hidden


def test_the_default_config_written_changes_nothing() -> None:
    assert config_mod.load_text(DEFAULT_CONFIG, None) == cfg()
    assert all(line.startswith("#") or line.startswith("[") or not line
               for line in DEFAULT_CONFIG.splitlines())  # fmt: skip
