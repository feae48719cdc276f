"""The preprocessing shared by ingest and predict: headers, ordering, decoding and the
one numeric transform (DESIGN: one preprocessing, two callers).

pydicom is quiet and lenient only inside medseq's own reads (`quiet.py`): importing this
package changes no setting of pydicom, of `warnings` or of `logging`.
"""
