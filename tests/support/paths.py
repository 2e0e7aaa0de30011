"""Where the repository and the tools cache (real components built or installed once) are."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("INFERGRAPH_CACHE", Path.home() / ".cache" / "infergraph"))
