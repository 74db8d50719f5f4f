"""Testing tools for transport authors: the conformance suite every adapter should pass.

Importing this package needs pytest; evcore itself never imports it.
See ``docs/writing-a-transport.md``.
"""

from evcore.testing.conformance import TransportConformance

__all__ = ["TransportConformance"]
