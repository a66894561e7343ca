"""`sparcode bench`: synthetic catalogs, per-path measurements, report."""

# Row names of bench.json, in the order they are measured.
PATHS = ("sparcode-local", "sparcode-es", "sparcode-os", "exact", "hnswlib", "es-knn")
