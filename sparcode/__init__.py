"""sparcode: serve a learned all-to-all recommender from a plain Elasticsearch term query."""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("sparcode")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"
