"""Flash sales: sharded stock bought by many at once, never oversold, never lost."""
