"""Referral rebates: a referrer invites, a referee completes the business, both are rewarded."""
