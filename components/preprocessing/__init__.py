"""The preprocessing shared by ingest and predict: headers, ordering, decoding and the
one numeric transform (DESIGN: one preprocessing, two callers)."""
