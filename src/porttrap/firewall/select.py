"""Making the firewall backend named in the configuration, or the first one this host can run
(`backend = "auto"`), saying what was tried and why each was refused. Which backends exist and
what each can do is `porttrap.firewall.registry`'s; this module only chooses and makes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, cast

from porttrap import log
from porttrap.errors import FirewallError
from porttrap.firewall import registry
from porttrap.firewall.registry import BackendInfo, Check

if TYPE_CHECKING:
    from porttrap.clock import Clock
    from porttrap.firewall.base import FirewallBackend, SensorBackend

_OR_DRY_RUN = '(or set backend = "dry-run" in [firewall] to only log what would be banned)'


def make_backend(
    name: str,
    table: str,
    clock: Clock,
    sensor: bool = False,
    supported: Mapping[str, Check] | None = None,
) -> FirewallBackend:
    """The backend called `name`, able to hold the kernel sensor of stealth and advanced modes
    when `sensor`; FirewallError says why it cannot run here and what to do. `supported`
    replaces the registry's support checks (tests); a backend it leaves out keeps its own."""
    found = supported if supported is not None else registry.checks()
    if name == registry.AUTO:
        info = registry.get(choose(found, sensor))
    else:
        info = registry.get(name)
        if sensor and not info.kernel_sensor:
            raise FirewallError(
                f"stealth and advanced trap modes need {_sensor_backends()}, not {name!r}: the "
                'kernel sensor is nftables rules (set [traps] mode = "connect" to use sockets)'
            )
        _require(info, _check(found, info))
    return info.make(table, clock)


def sensor_of(backend: FirewallBackend) -> SensorBackend:
    """`backend` as the writer of the kernel sensor's and the watch's rules; FirewallError when
    its registry entry says it holds neither (make_backend with `sensor` never gives one)."""
    info = registry.get(backend.name)
    if not (info.kernel_sensor or info.marks):
        raise FirewallError(f"the {backend.name} backend cannot hold the kernel sensor")
    return cast("SensorBackend", backend)


def _require(info: BackendInfo, check: Check) -> None:
    ok, reason = check()
    if not ok:
        raise FirewallError(f"firewall backend {info.name!r} cannot run: {reason} {_OR_DRY_RUN}")


def choose(supported: Mapping[str, Check], sensor: bool) -> str:
    """The first backend of `registry.auto_order` this host can run (with the kernel sensor,
    only one that hosts it); logs the choice and the refusals before it. When none can run,
    FirewallError lists why each was refused."""
    refused: list[str] = []
    for info in registry.auto_order(sensor):
        ok, reason = _check(supported, info)()
        if ok:
            log.event(
                "backend-auto", backend=info.name, reason=reason, refused="; ".join(refused) or None
            )
            return info.name
        refused.append(f"{info.name}: {reason}")
    hosts = " or ".join(registry.sensor_hosts())
    why = f" (stealth and advanced trap modes need {hosts})" if sensor else ""
    raise FirewallError(
        f'backend = "auto" found no firewall this host can run{why}: {"; ".join(refused)} '
        f"{_OR_DRY_RUN}"
    )


def _check(supported: Mapping[str, Check], info: BackendInfo) -> Check:
    return supported.get(info.name, info.is_supported)


def _sensor_backends() -> str:
    """'backend = "nftables"', as the sensor's error names the backends that host it."""
    return " or ".join(f'backend = "{name}"' for name in registry.sensor_hosts())
