"""`sparcode bench`: synthetic catalogs, per-path measurements, report."""
