"""The shell around the core (`porttrap.core`): the one asyncio loop and all the daemon's I/O.
wiring.py builds it from a configuration (the CLI's one entry), shell.py runs the loop and feeds
the core, effects.py carries out its commands, reloading.py a reload's steps; writer.py (store
writes on their own thread), control.py (the control socket), notify.py (systemd), metrics.py
and metrics_server.py (Prometheus)."""
