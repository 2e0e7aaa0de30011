"""Engine test fixtures."""

from __future__ import annotations

import pytest

from infergraph.testing.fakes import FakeTransport


@pytest.fixture
def fake() -> FakeTransport:
    return FakeTransport()
