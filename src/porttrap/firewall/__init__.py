"""Firewall backends: where bans take effect in the kernel (nftables) or only in the log
(dry-run). `base` is the interface, `kernel` the one module that talks to the kernel,
`select` picks a backend by name."""
