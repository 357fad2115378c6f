"""Data-model test worlds: the domains' own worlds (campaigns, activities, points files)."""

from __future__ import annotations

from tests.activities.conftest import sender as sender  # noqa: F401  (fixture)
from tests.campaigns.conftest import world as world  # noqa: F401  (fixture)
from tests.points_files.conftest import crypto as crypto  # noqa: F401  (fixture)
from tests.points_files.conftest import pgp as pgp  # noqa: F401  (fixture)
from tests.points_files.conftest import quiet_settings as quiet_settings  # noqa: F401  (fixture)
