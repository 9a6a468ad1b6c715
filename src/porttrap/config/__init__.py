"""Configuration: the validated `Config` (schema) and reading it from TOML (loader), reporting
every problem in the file at once with its line and key."""

from porttrap.config.loader import load, load_text

__all__ = ["load", "load_text"]
