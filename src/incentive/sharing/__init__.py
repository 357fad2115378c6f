"""Sharing: campaigns shared by merchants and customers, visits, conversions, sharer coupons."""
