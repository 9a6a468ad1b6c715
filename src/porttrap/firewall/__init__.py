"""Firewall backends: where bans take effect in the kernel (nftables, or ipset + iptables) or
only in the log (dry-run). `base` is the interface; `kernel` is the one module that talks to
libnftables and `exec` the one that runs programs (ipset, iptables); `select` picks a backend by
name, or the first this host can run (`auto`)."""
