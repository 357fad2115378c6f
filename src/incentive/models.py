"""Imports every domain's tables so Base.metadata (and Alembic) sees the whole schema."""

from incentive.auth import models as auth_models  # noqa: F401
from incentive.campaigns import models as campaign_models  # noqa: F401
from incentive.config import models as config_models  # noqa: F401
from incentive.events import models as events_models  # noqa: F401
from incentive.flash_sales import models as flash_sales_models  # noqa: F401
from incentive.kit import idempotency as idempotency_models  # noqa: F401
from incentive.ledger import models as ledger_models  # noqa: F401
from incentive.points_files import models as points_files_models  # noqa: F401
