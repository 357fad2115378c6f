"""Two-way rebates: a payment rebates the user and the merchant from the campaign budget."""
