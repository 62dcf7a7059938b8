"""Applying a model in batch: over a Zarr store or a folder of images."""
