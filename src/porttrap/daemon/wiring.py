"""Building the daemon from a configuration: the one function the CLI calls to run it.

It picks the store and the firewall backend the configuration names (the kernel sensor goes
with nftables, which then writes its rules), makes the core and the shell, and runs the loop
until SIGTERM or SIGINT.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from porttrap.clock import Clock, SystemClock
from porttrap.config.fleet import named
from porttrap.config.schema import Config
from porttrap.core.core import Core
from porttrap.daemon import statedir
from porttrap.daemon.notify import Notifier
from porttrap.daemon.shell import Shell
from porttrap.errors import PorttrapError
from porttrap.firewall import claim, registry
from porttrap.firewall.base import FirewallBackend, SensorBackend
from porttrap.firewall.claim import Claim
from porttrap.firewall.select import make_backend, sensor_of
from porttrap.store import open_store
from porttrap.store.base import Store


def make_shell(
    config: Config,
    clock: Clock,
    store: Store,
    firewall: FirewallBackend,
    sensor: SensorBackend | None = None,
    *,
    notifier: Notifier | None = None,
    config_path: Path | None = None,
    verbose: bool = False,
) -> Shell:
    """The core for `config` in a shell over these parts (tests give fakes)."""
    core = Core(config, started_at=clock.now())
    return Shell(
        core,
        clock,
        store,
        firewall,
        sensor,
        config_path=config_path,
        verbose=verbose,
        notifier=notifier,
    )


def run(
    config: Config,
    *,
    notifier: Notifier,
    config_path: Path | None = None,
    verbose: bool = False,
    flush_on_exit: bool = False,
) -> None:
    """Run porttrap as `config` says until asked to stop. `config_path`: what `-c` named (None:
    the default place), read again on reload. Raises PorttrapError when it cannot start."""
    clock = SystemClock()
    try:
        config = named(config)  # the fleet's name for this host, from its host name
    except ValueError as err:
        raise PorttrapError(str(err)) from None
    statedir.ensure(config.state_dir)  # before anything is written there
    firewall = make_backend(
        config.firewall.backend, config.firewall.table, clock, sensor=config.modes.kernel
    )
    with claim.claim(firewall.name, config.firewall.table) as owned:
        store = open_store(config)
        try:
            # The sensor's rules (stealth, advanced), or the watch of every mode where the
            # backend has one (nftables, ipset: the marks connect-mode UDP traps read).
            watches = config.modes.kernel or registry.get(firewall.name).marks
            sensor = sensor_of(firewall) if watches else None
            shell = make_shell(
                config,
                clock,
                store,
                firewall,
                sensor,
                notifier=notifier,
                config_path=config_path,
                verbose=verbose,
            )
            asyncio.run(_serve(shell, owned, flush_on_exit))
        finally:
            store.close()


async def _serve(shell: Shell, owned: Claim | None, flush_on_exit: bool) -> None:
    if owned is not None:
        owned.answer(asyncio.get_running_loop())
    try:
        await shell.run(flush_on_exit)
    finally:
        if owned is not None:
            owned.release()  # from the loop, which still watches it
