"""The fault proxy: the pure fault plan and the asyncio relay that applies it."""
