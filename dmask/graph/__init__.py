"""Dask graphs: runtime, training tasks, prediction tasks."""
