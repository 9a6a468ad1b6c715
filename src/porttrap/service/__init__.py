"""porttrap as a systemd service: the unit file, rendered from paths and the configuration
(`unit`, pure), and installing or removing it with its configuration, state and firewall
(`install`, the filesystem and systemctl work). The notify protocol the running daemon speaks
to systemd is `porttrap.daemon.notify`."""
