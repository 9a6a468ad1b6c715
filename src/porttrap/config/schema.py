"""The validated configuration: what the rest of porttrap reads. Built by `config.load`."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path

from porttrap.model import IPAddress, IPNetwork, Proto

DEFAULT_CONFIG_PATH = Path("/etc/porttrap/porttrap.toml")
DEFAULT_STATE_DIR = Path("/var/lib/porttrap")

# The classic trap lists (PortSentry's defaults): ports that no legitimate client touches.
DEFAULT_TCP_TRAPS = (
    "1", "11", "15", "79", "111", "119", "143", "540", "635", "1080", "1524", "2000", "5742",
    "6667", "12345", "12346", "20034", "27665", "31337", "32771-32774", "40421", "49724", "54320",
)  # fmt: skip
DEFAULT_UDP_TRAPS = (
    "1", "7", "9", "69", "161", "162", "513", "635", "640", "641", "700", "37444", "34555",
    "31335", "32770-32774", "31337", "54321",
)  # fmt: skip


class Escalation(enum.StrEnum):
    QUADRATIC = "quadratic"  # n-th ban lasts time * n**2  (port_trap)
    EXPONENTIAL = "exponential"  # n-th ban lasts time * 2**(n-1)
    NONE = "none"  # every ban lasts time


@dataclass(frozen=True, slots=True)
class Trap:
    """One trap port. `address` None: every local address of the protocol's families."""

    proto: Proto
    port: int
    address: IPAddress | None = None
    ban: float | None = None  # this trap's first-ban time in seconds; None: [ban] time


@dataclass(frozen=True, slots=True)
class BanPolicy:
    time: float = 3600.0
    escalation: Escalation = Escalation.QUADRATIC
    max_time: float = 30 * 86400.0
    permanent_after: int = 3  # the n-th ban is permanent; 0 = never
    trigger: int = 1  # distinct trap ports hit within `window` needed to ban
    window: float = 600.0
    forget_after: float = 90 * 86400.0  # bans older than this no longer count toward escalation


@dataclass(frozen=True, slots=True)
class FirewallConfig:
    backend: str = "nftables"  # "nftables" | "dry-run"
    table: str = "porttrap"  # nftables table name in family inet


@dataclass(frozen=True, slots=True)
class StoreConfig:
    hit_retention: float = 90 * 86400.0  # hits older than this are pruned


@dataclass(frozen=True, slots=True)
class Config:
    state_dir: Path = DEFAULT_STATE_DIR
    traps: tuple[Trap, ...] = ()
    ban: BanPolicy = field(default_factory=BanPolicy)
    allow: tuple[IPNetwork, ...] = ()
    firewall: FirewallConfig = field(default_factory=FirewallConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    source: Path | None = None  # the file this was read from; None: built-in defaults

    @property
    def database(self) -> Path:
        return self.state_dir / "porttrap.db"

    @property
    def control_socket(self) -> Path:
        return self.state_dir / "control.sock"
