"""porttrap: trap ports that no legitimate client touches and ban whoever touches them.

Sensors report hits, the pure policy engine turns hits into decisions, a firewall backend
applies them in the kernel and the store keeps the history. The daemon wires them together.
"""

__version__ = "0.1.0"
