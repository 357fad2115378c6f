from __future__ import annotations

from tests.campaigns.conftest import world  # noqa: F401  (the fixture)
