"""The `[log]` section and `[traps] banner`. Their recorded sample with every problem at once is
tests/data/config/log-errors.toml (checked with the other samples in test_config.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from porttrap.config.loader import load_text
from porttrap.config.schema import LogConfig, LogFormat, LogOutput
from porttrap.errors import ConfigError

FULL = """
[log]
level = "warning"

[[log.output]]
to = "stderr"

[[log.output]]
to = "/var/log/porttrap/porttrap.json"
format = "json"

[[log.output]]
to = "syslog"
format = "portsentry"
facility = "local3"

[[log.output]]
to = "/var/lib/portsentry/portsentry.history"
format = "portsentry-history"

[[log.output]]
to = "/var/log/net-bouncer.log"
format = "net-bouncer"
"""


def problems_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_text(text, Path("t.toml"))
    return [str(problem) for problem in caught.value.problems]


def test_without_log_one_stderr_output_in_porttraps_format() -> None:
    assert load_text("", None).log == LogConfig("info", (LogOutput("stderr", LogFormat.PORTTRAP),))
    assert load_text('[log]\nlevel = "debug"\n', None).log.outputs == LogConfig().outputs


def test_every_output_is_read_in_file_order() -> None:
    assert load_text(FULL, None).log == LogConfig(
        level="warning",
        outputs=(
            LogOutput("stderr", LogFormat.PORTTRAP),
            LogOutput("/var/log/porttrap/porttrap.json", LogFormat.JSON),
            LogOutput("syslog", LogFormat.PORTSENTRY, "local3"),
            LogOutput("/var/lib/portsentry/portsentry.history", LogFormat.PORTSENTRY_HISTORY),
            LogOutput("/var/log/net-bouncer.log", LogFormat.NET_BOUNCER),
        ),
    )


def test_a_path_is_normalised_so_that_two_spellings_of_one_file_clash() -> None:
    text = '[[log.output]]\nto = "/var/log/a.log"\n[[log.output]]\nto = "/var/log/./x/../a.log"\n'
    assert problems_of(text) == [
        "t.toml:4: [log.output[1].to] /var/log/a.log is already written by log.output[0]; two "
        "outputs in one file would mix their lines: give each output a file of its own"
    ]


def test_stderr_and_syslog_may_each_take_several_formats() -> None:
    text = "".join(
        f'[[log.output]]\nto = "{to}"\nformat = "{form}"\n'
        for to in ("stderr", "syslog")
        for form in ("porttrap", "portsentry")
    )
    assert len(load_text(text, None).log.outputs) == 4


def test_output_must_be_tables_and_not_none() -> None:
    assert problems_of('[log]\noutput = "stderr"\n') == [
        "t.toml:2: [log.output] expected [[log.output]] tables, each with to and format, got "
        '"stderr"'
    ]
    assert problems_of("[log]\noutput = []\n") == [
        "t.toml:2: [log.output] an empty list would leave porttrap without a log: leave output "
        "out for the default (stderr), or add a [[log.output]] table"
    ]
    assert problems_of("[log]\noutput = [1]\n") == [
        "t.toml:2: [log.output[0]] expected a table with to and format, got 1"
    ]


@pytest.mark.parametrize(
    ("to", "hint"),
    [
        ("var/log/porttrap.log", "; a file path must be absolute"),
        ("", ""),
        ("syslg", '; did you mean "syslog"?'),
    ],
)
def test_to_names_what_is_expected(to: str, hint: str) -> None:
    assert problems_of(f'[[log.output]]\nto = "{to}"\n') == [
        't.toml:2: [log.output[0].to] expected "stderr", "syslog" or an absolute file path such '
        f'as "/var/log/porttrap.log", got "{to}"{hint}'
    ]


# --- [traps] banner ---


def test_banner_is_utf8_bytes_and_absent_means_none() -> None:
    assert load_text("", None).banner == b""
    text = '[traps]\nbanner = "SSH-2.0-OpenSSH_9.2\\r\\n"\n'
    assert load_text(text, None).banner == b"SSH-2.0-OpenSSH_9.2\r\n"
    assert load_text('[traps]\nbanner = "Zugriff verweigert: ä"\n', None).banner == (
        "Zugriff verweigert: ä".encode()
    )


def test_banner_holds_at_most_1024_bytes_of_utf8() -> None:
    assert len(load_text(f'[traps]\nbanner = "{"x" * 1024}"\n', None).banner) == 1024
    assert problems_of(f'[traps]\nbanner = "{"é" * 513}"\n') == [
        "t.toml:2: [traps.banner] the banner is 1026 bytes in UTF-8, more than 1024; shorten it"
    ]
