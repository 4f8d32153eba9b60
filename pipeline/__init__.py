"""The geospatial pipeline: catalog -> sources -> ingest -> availability -> tiling -> classify -> mosaic -> export."""

__version__ = "0.1.0"
