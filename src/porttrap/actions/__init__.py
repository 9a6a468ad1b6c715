"""Actions besides the kernel ban, per event (hit, ban, permanent-ban, unban): commands
(PortSentry's KILL_RUN_CMD / KILL_RUN_CMD_FIRST), a hosts.deny line (KILL_HOSTS_DENY) and
webhooks.

`events` is the pure part: what an event says, its placeholders, environment and JSON body.
`process`, `webhook` and `hostsdeny` do the I/O; `runner` bounds how many commands and webhooks
run and wait at once; `dispatch` is what the daemon calls. None of it may delay or fail a ban:
an action runs after the kernel has the ban (or, with `first`, is only started before it), and
every failure is logged and counted, never raised into the daemon.
"""
