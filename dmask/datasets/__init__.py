"""Datasets: synthetic faces, folder layouts, ingest of photographs."""
