"""evcore-spool passes evcore's transport conformance suite."""

from __future__ import annotations

from pathlib import Path

import pytest

from evcore.testing import TransportConformance


class TestSpoolConformance(TransportConformance):
    invalid_urls = (
        "spool://",
        "spool://relative/dir",
        "spool://otherhost/tmp/bus",
        "spool:///tmp/bus?unknown=1",
    )

    @pytest.fixture(autouse=True)
    def _spool_dir(self, tmp_path: Path) -> None:
        self.transport_url = f"spool://{tmp_path / 'bus'}"
        blocker = tmp_path / "a-file"
        blocker.write_text("not a directory")
        self.unreachable_url = f"spool://{blocker}/bus"
