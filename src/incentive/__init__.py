"""Incentive: a marketing middle platform."""

__version__ = "0.1.0"
