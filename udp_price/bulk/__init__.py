"""Bulk CSV quoting: read orders, quote them in batches, write every row in order."""
