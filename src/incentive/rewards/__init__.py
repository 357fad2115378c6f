"""Rewards with live stock and automatic fallback to the next reward when one runs out."""
