"""The client: the pure sans-I/O session and its recovery rules, and the asyncio API around it."""
