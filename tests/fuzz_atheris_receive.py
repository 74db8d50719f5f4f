"""Coverage-guided fuzzing of the receive path with atheris (not part of the pytest run;
libFuzzer reports the inputs tried and stops at the first crash).

Each input is split into a content type, sequence headers and a body; the body goes both
through ``evcore_adapter_helpers.envelope.unpack`` (as a Redis payload) and straight into a
Receiver feeding a State. Any exception escaping either is a crash.

    pip install atheris
    python tests/fuzz_atheris_receive.py -runs=200000
"""

from __future__ import annotations

import contextlib
import logging
import sys
from typing import Any

import atheris

with atheris.instrument_imports():
    from evcore import Receiver, State
    from evcore.errors import MessageRejected
    from evcore.transport import IncomingMessage
    from evcore_adapter_helpers.envelope import unpack

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from test_fuzz_receive import FeedTransport

CONTENT_TYPES = ("application/json", None, "", "application/x-python-serialize", "text/plain")


def one_input(data: bytes) -> None:
    provider = atheris.FuzzedDataProvider(data)
    content_type = CONTENT_TYPES[provider.ConsumeIntInRange(0, len(CONTENT_TYPES) - 1)]
    headers: dict[str, Any] = {}
    if provider.ConsumeBool():
        headers = {"evcore-boot": "b", "evcore-seq": provider.ConsumeIntInRange(-2, 50)}
    localize = provider.ConsumeBool()
    body = provider.ConsumeBytes(provider.remaining_bytes())
    messages = [IncomingMessage(body, "task.started", "", content_type, "utf-8", headers)]
    with contextlib.suppress(MessageRejected):
        messages.append(unpack(body))
    transport, state = FeedTransport(), State(max_tasks_in_memory=100)
    receiver = Receiver(
        transport, handlers={"*": state.event}, raise_handler_errors=True, localize=localize
    )
    transport.feed(*messages)
    receiver.capture(timeout=0.0005)
    state.to_json()


if __name__ == "__main__":
    logging.disable(logging.CRITICAL)  # every refusal is logged; the fuzzer makes millions
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
