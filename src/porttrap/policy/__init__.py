"""The pure decision engine: hits and admin requests in, bans and unbans out.

No sockets, no subprocesses, no clock reads: the caller passes `now`. The daemon applies the
decisions (firewall, store, log); tests assert them directly.
"""

from porttrap.policy.engine import Policy, Verdict
from porttrap.policy.protect import Protection

__all__ = ["Policy", "Protection", "Verdict"]
