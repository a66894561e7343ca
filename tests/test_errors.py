"""A program embedding sparcode catches one class, SparcodeError, for every error a user or the
data can cause, and still catches each by the built-in base it had before."""
import importlib
import inspect
import pkgutil

import sparcode
from sparcode.errors import SparcodeError

# Internal signals, caught inside the package and never seen by a caller.
INTERNAL = {"sparcode.locks.LockHeld", "sparcode.pipeline.local_node._NodeDied", "sparcode.staging._FilledMeanwhile"}


def _exception_classes():
    for info in pkgutil.walk_packages(sparcode.__path__, "sparcode."):
        module = importlib.import_module(info.name)
        for name, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == info.name and issubclass(cls, Exception):
                yield f"{info.name}.{name}", cls


def test_every_error_of_the_package_is_a_sparcode_error():
    found = dict(_exception_classes())
    assert {"sparcode.config.ConfigError", "sparcode.encoder.runs.RunError",
            "sparcode.pipeline.backends.BackendError", "sparcode.data.errors.DataError"} <= set(found)
    outside = sorted(name for name, cls in found.items() if name not in INTERNAL and not issubclass(cls, SparcodeError))
    assert outside == []


def test_the_built_in_bases_callers_caught_before_are_kept():
    from sparcode.config import ConfigError
    from sparcode.pipeline.backends import BackendError
    from sparcode.pipeline.engine import EngineError
    from sparcode.pipeline.query import QueryError

    assert issubclass(ConfigError, ValueError) and issubclass(QueryError, ValueError)
    assert issubclass(BackendError, RuntimeError) and issubclass(EngineError, RuntimeError)
