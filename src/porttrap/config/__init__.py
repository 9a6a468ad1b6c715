"""Configuration: the validated `Config` (schema.py) and reading it from TOML (loader.py),
reporting every problem in the file at once with its line and key.

This file imports nothing: the schema is what the pure parts (policy, core) use, and the
loader checks names against the firewall registry, which they must never import
(tests/unit/test_architecture.py). Read a file with `porttrap.config.loader.load`.
"""
