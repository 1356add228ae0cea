"""Uploads streamed to storage in bounded memory, and their downloads (docs/uploads.md)."""
