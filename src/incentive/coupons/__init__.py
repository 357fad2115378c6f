"""Coupons: a wallet, third-party providers, coupons locked until a task is done."""
