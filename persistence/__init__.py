"""The durable side of Canopy: records, stores, journals and the write-behind flusher.

Nothing here imports the engine: the engine depends on these interfaces.
"""
