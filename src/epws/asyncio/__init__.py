"""The asyncio I/O layer: moves bytes between sockets and the sans-I/O protocol core."""
