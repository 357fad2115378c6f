"""Live configuration: typed keys changed at run time, validated, audited, pushed to every
process within a second or two.

Public surface for other domains::

    from incentive.config import register_key, live_config
    MY_KEY = register_key("domain.name", Annotated[int, Field(ge=1)], 10, "what it does")
    live_config.get(MY_KEY)            # or live_config.get("domain.name")

The platform's shared keys (flash-sale buckets and switches, points-file batching, ledger
batch size) are declared in ``incentive.config.keys``.
"""

from incentive.config import keys
from incentive.config.live import LiveConfig, live_config
from incentive.config.registry import ConfigKey, get_key, register_key, registered_keys

__all__ = [
    "ConfigKey",
    "LiveConfig",
    "get_key",
    "keys",
    "live_config",
    "register_key",
    "registered_keys",
]
