"""`porttrap demo`: porttrap at work on any machine, without touching the machine's network.

Two network namespaces made for the occasion (a protected host and a scanner, joined by a veth
pair, documentation addresses only), the real daemon and a small service in the first, scans
from the second, and an account of what happened with timings measured for real. Everything
the demo made is removed when it ends, however it ends; what an earlier demo left behind
because it was killed is removed before the next one starts.

- `names`: the namespaces' and temporary directories' names, which carry their owner's PID,
  and which of them are stale;
- `plan`: the demo's addresses, ports and configuration (pure);
- `lab`: the namespaces and the processes in them (the one demo module that runs programs);
- `probes`: sockets opened from inside a namespace, for the scanner's connections;
- `script`: the steps, their checks and measurements, told to a `Narrator`;
- `run`: one demo from start to end, SIGINT and SIGTERM included.
"""
