"""Firewall backends: where bans take effect in the kernel (nftables, or ipset + iptables) or
only in the log (dry-run). `base` is the interface; `registry` names every backend with what it
can do; `select` makes one by name, or the first this host can run (`auto`); `kernel` is the one
module that talks to libnftables and `exec` the one that runs programs (ipset, iptables)."""
