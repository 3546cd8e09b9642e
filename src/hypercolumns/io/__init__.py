"""Outputs on disk: single files with their metadata (``files``) and chunked stores (``store``)."""
