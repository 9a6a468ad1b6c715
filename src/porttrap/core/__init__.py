"""The daemon's pure core: events in (events.py), commands out (commands.py), decided by
`Core.handle(event, now)` (core.py) with the policy, the kernel sensor's wanted state
(kernel.py), reloads (reload.py) and the daemon's counters (stats.py). `Core.snapshot` gives
what status, top and metrics read (snapshot.py, views.py). No I/O, clock, thread or event loop
here: the shell (`porttrap.daemon`) does all of that."""
