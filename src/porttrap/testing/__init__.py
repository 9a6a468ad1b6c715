"""Fakes shipped with porttrap, so tests and plugins share them: a fake clock, an in-memory
firewall backend and store, and factories for hits and bans."""

from porttrap.testing.clock import FakeClock
from porttrap.testing.memory_firewall import MemoryFirewall
from porttrap.testing.memory_store import MemoryStore

__all__ = ["FakeClock", "MemoryFirewall", "MemoryStore"]
