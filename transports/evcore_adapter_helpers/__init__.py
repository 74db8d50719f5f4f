"""Helpers that transport adapters share, kept out of evcore's core.

:mod:`evcore_adapter_helpers.envelope` is kombu's virtual-transport envelope, the wire format
of Redis and of any adapter that meets kombu's virtual transports; only adapters use it.
Third-party adapters may import these helpers too: they ship with evcore.
"""
