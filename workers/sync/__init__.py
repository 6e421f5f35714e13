"""The sync part: keeps a joined device registered with its hub (``runtime/sync.py``)."""
