"""Private nats-server processes for the NATS fault tests, on free ports of their own."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from _net import free_port, wait_for


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class PrivateNats:
    """A nats-server of the test's own, to stop (or kill) and start again on the same port.

    With ``store_dir`` it runs JetStream with its file store there, so a restart keeps the
    streams.
    """

    def __init__(self, store_dir: Path | None = None) -> None:
        self.port = free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        #: The server's HTTP monitoring port (``/connz`` lists its client connections).
        self.monitoring_port = free_port()
        self.store_dir = store_dir
        self._process: subprocess.Popen[bytes] | None = None

    def connections(self) -> int:
        """How many client connections the server has now."""
        import json
        from urllib.request import urlopen

        with urlopen(f"http://127.0.0.1:{self.monitoring_port}/connz", timeout=5) as answer:
            return int(json.load(answer)["num_connections"])

    def start(self) -> None:
        binary = shutil.which("nats-server")
        if binary is None:
            raise RuntimeError("nats-server is not on PATH (apt-get install nats-server)")
        command = [binary, "-a", "127.0.0.1", "-p", str(self.port)]
        command += ["-m", str(self.monitoring_port)]
        if self.store_dir is not None:
            command += ["-js", "-sd", str(self.store_dir)]
        self._process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        if not wait_for(lambda: _listening(self.port), timeout=10):
            self.stop()
            raise RuntimeError(f"nats-server on port {self.port} did not come up")

    def stop(self, kill: bool = False) -> None:
        """Stop the server: SIGTERM (a clean shutdown), or SIGKILL with ``kill``."""
        process, self._process = self._process, None
        if process is None:
            return
        process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@contextmanager
def private_nats(store_dir: Path | None = None) -> Iterator[PrivateNats]:
    """A private nats-server for the ``with`` block, killed at its end whatever happens."""
    server = PrivateNats(store_dir)
    server.start()
    try:
        yield server
    finally:
        server.stop(kill=True)


@contextmanager
def jetstream_url(nats_url: str, partitions: int) -> Iterator[str]:
    """A ``jetstream://`` URL whose streams have a prefix of their own, deleted afterwards."""
    prefix = f"evtest{uuid.uuid4().hex[:10]}"
    base = nats_url.replace("nats://", "jetstream://", 1)
    try:
        yield f"{base}?partitions={partitions}&stream_prefix={prefix}"
    finally:
        delete_streams(nats_url, prefix)


def delete_streams(url: str, prefix: str) -> list[str]:
    """Delete every JetStream stream (and groups bucket) whose name starts with ``prefix``
    on the server at ``url``; the names deleted. Tests give their streams a unique prefix."""
    import asyncio

    import nats

    async def sweep() -> list[str]:
        client = await nats.connect(url, allow_reconnect=False, max_reconnect_attempts=1)
        try:
            jsm = client.jsm()
            doomed = [
                info.config.name
                for info in await jsm.streams_info()
                if info.config.name.startswith((prefix, f"KV_{prefix}"))
            ]
            for name in doomed:
                await jsm.delete_stream(name)
            return doomed
        finally:
            await client.close()

    return asyncio.run(sweep())
