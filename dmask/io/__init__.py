"""Stores and file formats: Zarr schemas, locks, photographs, reference weights."""
