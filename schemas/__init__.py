"""Contracts: every message that crosses a process boundary, as msgspec Structs.

Nothing in this package does I/O; it may be imported by any part.
"""
