"""Engine test fixtures."""

from __future__ import annotations

import pytest
from fakes import FakeTransport


@pytest.fixture
def fake() -> FakeTransport:
    return FakeTransport()
