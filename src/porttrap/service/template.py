"""The configuration `porttrap install-service` writes when there is none: every setting
commented out at its default, so that the file changes nothing and shows what can be set."""

from __future__ import annotations

WRITTEN_BY = "written by `porttrap install-service`"
DEFAULT_CONFIG = """\
# porttrap's configuration, written by `porttrap install-service`. Everything below is
# commented out and shows the default: uncomment what you change. An unknown key is an error.
# After an edit:
#   porttrap check-config          # every problem at once, with its line and key
#   systemctl reload porttrap      # applies it, keeping every ban and counter
# After changing state_dir, a [[log.output]] file, [actions.hosts_deny] file or the
# [firewall] backend, run `porttrap install-service --force` again: the service may write
# only where these point, and the ipset backend needs one more capability.

# state_dir = "/var/lib/porttrap"       # database and control socket

[traps]
# mode = "advanced"                     # "connect" | "stealth" | "advanced"; listing tcp or
#                                       #   udp below makes the default "connect" (README)
# tcp = ["23", "2323", "3389"]          # default: PortSentry's classic lists (see the README)
# udp = ["640", "31337"]
# banner = ""                           # sent by connect-mode TCP traps before closing

[ban]
# time = "1h"                           # first ban
# escalation = "quadratic"              # the n-th ban lasts time x n^2; "exponential", "none"
# max_time = "30d"
# permanent_after = 3                   # the 3rd ban is permanent; 0 = never
# trigger = 1                           # distinct trap ports within `window` to ban
# confirm = 2                           # hits needed when they cannot prove their source
# window = "10m"
# forget_after = "90d"
# respond = "ban"                       # "ban" | "log" | "command"

[allow]
# addresses = ["192.0.2.0/24"]          # never banned; the host's own addresses never are
# patterns = []

[firewall]
# backend = "nftables"                  # "nftables" | "ipset" | "auto" | "dry-run"
# table = "porttrap"

[store]
# hit_retention = "90d"

[log]
# level = "info"                        # stderr goes to the journal: journalctl -u porttrap
"""


def default_config(writer: str = WRITTEN_BY) -> str:
    """DEFAULT_CONFIG, its first line saying it was `writer` (the Debian package's conffile)."""
    return DEFAULT_CONFIG.replace(WRITTEN_BY, writer, 1)
