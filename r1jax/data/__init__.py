"""Data: file sources (sources.py), grain pipelines (pipeline.py), the built-in world (world.py)."""
