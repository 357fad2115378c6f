"""Sharded stock that never oversells (flash sales, reward stock, coupon quotas)."""

from incentive.stock.engine import (
    Deduction,
    StockEngine,
    Take,
    give_back,
    stock_engine_from_url,
)

__all__ = ["Deduction", "StockEngine", "Take", "give_back", "stock_engine_from_url"]
