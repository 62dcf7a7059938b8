"""Clusters: connecting to a local or existing Dask cluster, and SSH launches."""
