"""Build a new versioned index from an export and move an alias onto it atomically.

Every build goes into `<alias>-<fingerprint[:8]>-<utc timestamp>`; readers only ever see the
alias, which moves in one `update_aliases` call after the document count is verified, so a
search running during a reindex sees either the old index or the new one, never a partial one.
"""
from __future__ import annotations

import contextlib
import re
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable

from sparcode.errors import SparcodeError
from sparcode.pipeline import bulk, layout, mappings
from sparcode.pipeline.engine import (Engine, EngineError, EngineTimeout, EngineUnavailable, redact, retry_transient,
                                      retry_unavailable, retry_unless_timed_out)
from sparcode.pipeline.export import ExportError, same_export

FORCE_MERGE_TIMEOUT_S = 3600
# With `codes` out of `_source`, a merge keeps their JSON as `_recovery_source` until the
# node's next history-lease renewal (every 30 s): a 200k-item index is 134 MB merged at once,
# 47 MB merged after it. Worth the wait from this size on; below, the copy is a few MB.
SETTLE_MIN_DOCS = 10_000
SETTLE_TIMEOUT_S = 45


class IndexProblem(SparcodeError, RuntimeError):
    """A refusal or failed check the user can act on; one line."""


class IncompleteLoad(IndexProblem):
    """The load into `index` failed after the index was created; the alias did not move."""

    def __init__(self, cause: Exception | str, index: str, alias: str, resumable: bool = True, gone: bool = False):
        self.index, self.alias = index, alias
        what = answered(cause)
        # One line, unless the cause lists refused documents: then the way on closes the list.
        joint = "\n" if "\n" in what else "; "
        if gone:
            super().__init__(f"{what}{joint}alias {alias} not moved; the partial index {index} no longer exists "
                             f"(deleted meanwhile, perhaps by another build of {alias} with --delete-old): "
                             "build again")
            return
        way_on = ("`--resume` continues it once the cause is fixed, and the next build with `--delete-old` removes it"
                  if resumable else "the next build with `--delete-old` removes it")
        super().__init__(f"{what}{joint}alias {alias} not moved; the partial index {index} is kept: {way_on}")


@contextlib.contextmanager
def kept_if_failed(engine: Engine, name: str, alias: str, resumable: bool = True):
    """Around the steps between creating `name` and marking it complete: a failure, or Ctrl-C,
    names the partial index it leaves (a Ctrl-C stays an interrupt, carrying the line as a note),
    or says it is gone when another build deleted it meanwhile (which is often why the load failed)."""
    try:
        yield
    except (bulk.BulkFailed, EngineError, EngineUnavailable) as exc:
        raise IncompleteLoad(exc, name, alias, resumable, gone=_gone(engine, name)) from exc
    except KeyboardInterrupt as exc:
        exc.add_note(str(IncompleteLoad("interrupted", name, alias, resumable)))
        raise


def answered(cause: Exception | str) -> str:
    return f"the search engine answered {cause}" if isinstance(cause, EngineError) else str(cause)


@dataclass
class BuildResult:
    index: str
    alias: str
    docs: int
    seconds_bulk: float
    previous: list[str]
    deleted: list[str]
    resumed: bool
    cpu_bulk: float | None = None  # node + client CPU seconds spent in the bulk load

    @property
    def docs_per_second(self) -> float:
        return self.docs / max(self.seconds_bulk, 1e-9)

    @property
    def docs_per_cpu_second(self) -> float | None:
        return None if self.cpu_bulk is None else self.docs / max(self.cpu_bulk, 1e-9)


class CpuMeter:
    """Node + client CPU seconds over a block, when the node reports its own."""

    def __init__(self, engine: Engine):
        self.engine, self.seconds = engine, None

    def __enter__(self):
        self._node, self._client = self.engine.process_cpu_seconds(), time.process_time()
        self._wall = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self._wall
        node = self.engine.process_cpu_seconds()
        if node is not None and self._node is not None:
            self.seconds = node - self._node + time.process_time() - self._client
        return False


_step = retry_transient


def load_step(streams: int):
    """The retry around a whole load: one stream goes through the bulk helper that resends 429s
    itself with backoff; parallel streams resend nothing, so the step does."""
    return retry_transient if streams > 1 else retry_unavailable


def checked_alias(engine: Engine, alias: str) -> list[str]:
    """The indices `alias` points at, once it is known to be a name every build can use: the
    engine's own refusal of a bad name would come only after a versioned index was named for it."""
    if alias != alias.lower() or not re.match(r"^[a-z0-9][a-z0-9_.-]*$", alias):
        raise IndexProblem(f"alias {alias!r}: use lowercase letters, digits, '-', '_' or '.'")
    if engine.exists(alias) and not engine.alias_exists(alias):
        raise IndexProblem(f"{alias!r} is a concrete index, not an alias; pick another --alias")
    return engine.alias_holders(alias)


def versioned_name(alias: str, fingerprint: str, now: datetime | None = None) -> str:
    return f"{alias}-{fingerprint[:8].lower()}-{_stamp_of(now)}"


def _stamp_of(now: datetime | None = None) -> str:
    """A versioned name's timestamp (now by default); they sort in time order."""
    return (now or datetime.now(timezone.utc)).strftime("%Y%m%dt%H%M%S%fz")


def index_meta(engine: Engine, index: str) -> dict:
    """The `_meta` of `index` (an index name or an alias pointing at one index)."""
    mapping = engine.mappings(index)
    if len(mapping) != 1:
        raise IndexProblem(f"{index} resolves to {len(mapping)} indices; expected one")
    return next(iter(mapping.values())).get("_meta", {})


def _versioned_pattern(alias: str, fingerprint: str | None = None) -> re.Pattern:
    """`versioned_name`s of `alias` (of one export, if `fingerprint`)."""
    prefix = "[0-9a-f]{8}" if fingerprint is None else re.escape(fingerprint[:8].lower())
    return re.compile(rf"^{re.escape(alias)}-{prefix}-\d{{8}}t\d{{12}}z$")


def versioned_indices(engine: Engine, alias: str) -> list[str]:
    """Every index a build of `alias` made (`versioned_name`), finished or not."""
    pattern = _versioned_pattern(alias)
    return sorted(name for name in engine.matching(f"{alias}-*") if pattern.match(name))


def unfinished_indices(engine: Engine, alias: str, fingerprint: str | None = None) -> list[str]:
    """Versioned indices of `alias` (of one export, if `fingerprint`) whose load never completed, newest first."""
    pattern = _versioned_pattern(alias, fingerprint)
    names = engine.matching(f"{alias}-*")
    found = []
    for name in sorted(names, reverse=True):
        meta = names[name].get("_meta", {})
        if pattern.match(name) and not meta.get("complete") and fingerprint in (None, meta.get("fingerprint")):
            found.append(name)
    return found


def unfinished_index(engine: Engine, alias: str, fingerprint: str) -> str | None:
    """The newest versioned index of `alias` for this export whose load never completed."""
    found = unfinished_indices(engine, alias, fingerprint)
    return found[0] if found else None


def build(engine: Engine, export, alias: str, *, field_type: str | None = None, resume: bool = False,
          delete_old: bool = False, replace: bool = True, chunk_size: int = bulk.CHUNK_SIZE,
          streams: int = bulk.STREAMS, on_chunk: Callable[[int], None] | None = None, progress: bool | None = None,
          settle: bool | None = None, status: Callable[[str], None] | None = None) -> BuildResult:
    """Index `export` under a new (or, with `resume`, the unfinished) versioned index; move `alias`.

    `replace=False` refuses when `alias` already exists (`sparcode index`); `field_type=None`
    keeps the field type of the index the alias points at, else the engine's default
    (`sparse_vector` on Elasticsearch, `rank_features` on OpenSearch). `settle` waits for the
    node to release the load's history before merging (default: from SETTLE_MIN_DOCS items).
    `status(line)` hears what the build waits for after the load (the settle wait, the merge).
    A load that fails once the index exists raises `IncompleteLoad`, naming the index to resume;
    `delete_old` also removes the alias's unfinished leftovers once the new index serves.
    """
    started = _stamp_of()  # what --delete-old spares is made after this
    previous = checked_alias(engine, alias)
    name = unfinished_index(engine, alias, export.fingerprint) if resume else None
    resumed = name is not None
    if previous and not replace and not resumed:
        raise IndexProblem(f"alias {alias!r} already points at {', '.join(previous)}; "
                           "use `sparcode reindex` to replace it")
    if resumed:
        _check_resumable(engine, name, export)
    chosen = field_type is not None
    if field_type is None:
        inherited = index_meta(engine, newest(previous)).get("field_type") if previous else None
        # Only a codes field type carries over: an alias serving a two-tower (dense_vector) or
        # semantic-ID index may be moved to a SparCode index (a model swap), which takes the
        # engine's default, as would an alias built on a node that has lost the type since.
        field_type = inherited if inherited in engine.field_types else engine.default_field_type
    if field_type not in engine.field_types:
        raise IndexProblem(f"{engine.label} has no {field_type} field type; use --field-type "
                           f"{engine.default_field_type} (the default for --engine {engine.name})"
                           if chosen else f"{engine.label} has no {field_type} field type")
    export.validate()  # before any write: a bad value never leaves a half-built index behind

    if name is None:
        name = versioned_name(alias, export.fingerprint)
        body = mappings.index_body(export, field_type)
        term_layout = body["mappings"]["_meta"]["layout"]
        _create(engine, name, body, field_type)
    else:
        meta = index_meta(engine, name)
        field_type, term_layout = meta.get("field_type", field_type), meta.get("layout", layout.FLAT)
        _step(engine.set_refresh_interval)(name, "-1")
    numbering = None
    if term_layout == layout.NUMBERED:
        numbering = layout.Numbering(export.indexed_terms())
        if resumed and index_meta(engine, name).get("numbering", {}).get("digest") != numbering.digest:
            # Same model, another export of it (another stored fraction): its terms rank differently.
            raise IndexProblem(f"{name} was started from another export of this model (its code table "
                               f"differs); rebuild without --resume")

    with kept_if_failed(engine, name, alias), CpuMeter(engine) as meter:
        load_step(streams)(bulk.load)(engine, export, name, term_layout=term_layout, numbering=numbering,
                                      chunk_size=chunk_size, streams=streams, on_chunk=on_chunk, progress=progress)
    with kept_if_failed(engine, name, alias):
        docs = _finalize(engine, name, export.n_items >= SETTLE_MIN_DOCS if settle is None else settle, status)
    if docs != export.n_items:
        raise IncompleteLoad(f"{name} holds {docs} documents, the export has {export.n_items}", name, alias)
    try:
        # The build read the folder several times (manifest, code table, items); a swap in between
        # would label one export's documents with the other's manifest, and searches would trust it.
        export.check_unchanged()
    except ExportError as exc:
        raise IncompleteLoad(f"{exc}: build again", name, alias, resumable=False) from None
    meta = mappings.index_meta(export, field_type, term_layout, complete=True, numbering=numbering)
    deleted = publish(engine, alias, name, meta, previous, delete_old, status, started=started,
                      claim=not replace and not previous)
    return BuildResult(name, alias, docs, meter.wall, previous, deleted, resumed, meter.seconds)


def _check_resumable(engine: Engine, name: str, export) -> None:
    """An unfinished index of this model may have been started from another export of it (another
    stored fraction or code sample): its mapping (grouped codes fields) and the documents already in
    it belong to that export, so resuming would fail on every attempt or mix the two. The export's
    identity recorded in `_meta` is compared the way search compares it (`EngineBackend`)."""
    built_from = index_meta(engine, name).get("manifest") or {}
    ours = export.summary()
    if built_from and not same_export(built_from, ours):
        raise IndexProblem(f"{name} was started from another export of this model (made {built_from.get('created')}, "
                           f"{built_from.get('pairs')} postings; {export.path} was made {ours.get('created')}, "
                           f"{ours.get('pairs')} postings): rebuild without --resume")


def publish(engine: Engine, alias: str, name: str, meta: dict, previous: list[str], delete_old: bool,
            status: Callable[[str], None] | None = None, resumable: bool = True, started: str | None = None,
            claim: bool = False) -> list[str]:
    """Mark the loaded index `name` complete, move `alias` onto it and, with `delete_old`, delete
    the alias's indices made before this build `started` (a versioned-name timestamp; default:
    `name`'s own) other than what the alias serves; returns those deleted. A failure says the state it leaves: the
    alias not moved and which index is kept, or the alias moved and what is left to delete.

    `claim` creates `alias` rather than moving it (`sparcode index` of a new alias): if another
    build created it meanwhile, `AliasTaken` says so and `name` is kept, serving nothing."""
    _check_still_ours(engine, name, meta, alias)
    with kept_if_failed(engine, name, alias, resumable):  # not marked complete: --delete-old finds it
        _step(engine.put_meta)(name, meta)
    try:
        serving = (_claim if claim else _swap)(engine, alias, name)
    except (EngineError, EngineUnavailable) as exc:
        holders = _holders_if_readable(engine, alias)
        if holders is None:
            raise IndexProblem(f"{answered(exc)}; whether alias {alias} moved is unknown (its holders could not be "
                               f"read: check GET _alias/{alias}); the complete index {name} is kept") from exc
        if name not in holders:  # else only the answer was lost: the alias did move
            kept = (f"the complete index {name} no longer exists (deleted meanwhile, perhaps by another build of "
                    f"{alias} with --delete-old)" if _gone(engine, name) else
                    f"the complete index {name} is kept: the next build with --delete-old removes it")
            raise IndexProblem(f"{answered(exc)}; alias {alias} not moved (it serves {', '.join(holders) or 'nothing'}); "
                               f"{kept}") from exc
        serving = newest(holders)
    except KeyboardInterrupt as exc:
        exc.add_note(f"interrupted while moving alias {alias} to the complete index {name}: check where it points "
                     f"(GET _alias/{alias}); the next build with --delete-old removes whichever is left over")
        raise
    if serving != name and status is not None:
        status(f"a build running at the same time moved {alias} to {serving}, the newer index")
    if not delete_old:
        return []
    # Never an index made after this build began (another build's, perhaps still loading or about
    # to serve), and never what the alias serves when read again just before the delete: two
    # builds with --delete-old at once otherwise each delete the other's index, and the alias
    # ends on nothing. A resumed build began now, not when its index was first made.
    cutoff = started or _stamp(name)
    older = {old for old in versioned_indices(engine, alias) if _stamp(old) < cutoff}
    holders = _holders_if_readable(engine, alias)
    if holders is None:
        return []  # cannot tell what serves: delete nothing rather than guess
    deleted = sorted((set(previous) | older) - set(holders) - {serving})
    if deleted:
        try:
            _step(engine.delete_indices)(deleted)
        except KeyboardInterrupt as exc:
            exc.add_note(f"interrupted; alias {alias} serves {serving}; some of {', '.join(deleted)} may be left: "
                         "rerun with --delete-old")
            raise
        except (EngineError, EngineUnavailable) as exc:
            # Read again: another build may have moved the alias or deleted some of these meanwhile,
            # and advice to delete an index the alias now serves would take the alias down.
            holders = _holders_if_readable(engine, alias)
            left = [old for old in deleted if not _gone(engine, old) and old not in (holders or [])]
            if isinstance(exc, EngineError) and exc.status == 404 and holders == [serving]:
                # Another build with --delete-old deleted some of the same indices first (a delete
                # racing another delete of one index is a 404 even with ignore_unavailable): gone
                # counts as deleted, and what is still there is deleted now.
                if not left or _deleted_again(engine, left):
                    return [old for old in deleted if old not in left or _gone(engine, old)]
            serves = "an unknown index (check GET _alias/" + alias + ")" if holders is None else \
                ", ".join(holders) or "nothing"
            if not left:
                raise IndexProblem(f"{answered(exc)}; alias {alias} serves {serves}; the old indices are gone or "
                                   "serving (another build ran at the same time)") from exc
            raise IndexProblem(f"{answered(exc)}; alias {alias} serves {serves}, but {', '.join(left)} "
                               "were not deleted: rerun with --delete-old") from exc
    return deleted


def _deleted_again(engine: Engine, names: list[str]) -> bool:
    try:
        _step(engine.delete_indices)(names)
    except (EngineError, EngineUnavailable):
        return all(_gone(engine, name) for name in names)
    return True


def _check_still_ours(engine: Engine, name: str, meta: dict, alias: str) -> None:
    """The index must still be the one this build created. Deleted during the load (another
    build's --delete-old), it is re-created by the node's auto-create from the next bulk request,
    with guessed mappings no query scores: serving that would answer every search with nothing."""
    found = index_meta(engine, name).get("fingerprint")
    if found != meta.get("fingerprint"):
        raise IndexProblem(f"stopped: {name} is no longer the index this build created (deleted during the load, "
                           "perhaps by another build's --delete-old, and re-created by the node without its "
                           f"mapping); alias {alias} not moved; that index cannot serve or be resumed: the next "
                           "build with --delete-old removes it")


def _gone(engine: Engine, name: str) -> bool:
    """True only when the node says `name` does not exist; unknown (no answer) is not gone."""
    try:
        return not engine.exists(name)
    except (EngineError, EngineUnavailable):
        return False


def _holders_if_readable(engine: Engine, alias: str) -> list[str] | None:
    try:
        return engine.alias_holders(alias)
    except (EngineError, EngineUnavailable):
        return None


@_step
def _create(engine: Engine, name: str, body: dict, field_type: str) -> None:
    if engine.exists(name):  # a retried create whose first answer was lost
        return
    try:
        engine.create_index(name, body)
    except EngineError as exc:
        if exc.status != 400:
            raise
        if field_type == "rank_features" and "rank_features" in exc.reason:
            # The integ-test Elasticsearch lacks the mapper-extras module that defines the type.
            raise IndexProblem(f"{engine.label} at {redact(engine.url)} has no rank_features field type "
                               "(mapper-extras module missing, as in the integ-test distribution); use "
                               "--field-type sparse_vector, a full distribution (docker/docker-compose.yml), "
                               "or --engine opensearch") from None
        raise IndexProblem(f"{engine.label} refused the mapping for {name}: {exc.reason}") from None


def _finalize(engine: Engine, name: str, settle: bool, status: Callable[[str], None] | None = None) -> int:
    say = status or (lambda _line: None)
    _prepare_merge(engine, name, settle, say)
    # One segment: smaller, faster to search, and deleted copies from a resume are dropped.
    say(f"merging {name} into one segment")
    started = time.monotonic()
    try:
        # A merge that outlives its request timeout goes on in the node; sending it again would
        # only wait another hour, five times over.
        retry_unless_timed_out(engine.forcemerge)(name, FORCE_MERGE_TIMEOUT_S)
        say(f"merged in {time.monotonic() - started:.0f} s")
    except EngineTimeout:
        # The index is complete and searchable; only its size and speed wait for the merge.
        say(f"the merge of {name} did not finish within {FORCE_MERGE_TIMEOUT_S} s; it goes on in the node, and "
            "the index serves meanwhile")
    return _step(engine.count)(name)


@_step
def _prepare_merge(engine: Engine, name: str, settle: bool, say: Callable[[str], None]) -> None:
    engine.set_refresh_interval(name, None)  # null restores the default
    engine.refresh(name)
    if settle:
        # A merge drops recovery copies older than both the leases and the last commit.
        engine.flush(name)
        say(f"waiting up to {SETTLE_TIMEOUT_S} s for the node to release the load's history, "
            "so the merge can drop its recovery copy of the codes")
        waited = _await_history_release(engine, name, SETTLE_TIMEOUT_S)
        say(f"history released after {waited:.0f} s" if waited is not None
            else "history not released in time; merging anyway (the index stays larger until its next merge)")
        # The merge also keeps whatever lies past the last *persisted* global checkpoint and the
        # last safe commit; the load's final batch can leave both behind until the next commit.
        engine.flush(name, force=True)


def _await_history_release(engine: Engine, name: str, timeout_s: float) -> float | None:
    """Seconds until the node released the history, or None at the timeout."""
    started = time.monotonic()
    # On timeout we merge anyway: the index works, it is only larger until its next merge.
    while not engine.history_released(name):
        if time.monotonic() - started >= timeout_s:
            return None
        time.sleep(1.0)
    return time.monotonic() - started


@_step
def _swap(engine: Engine, alias: str, name: str) -> str:
    """Move the alias onto `name` and off every other index, returning the index it ends on.

    One request takes it off every holder ("*") and adds it to `name`. Two builds swapping at
    the same moment can still both add theirs (the server expands "*" before applying either
    request), and an alias on two indices serves no search; so the holders are read back, and
    every build that finds several keeps the newest (versioned names sort by time) and drops
    the rest: all of them agree on which one stays."""
    engine.update_aliases([{"remove": {"index": "*", "alias": alias, "must_exist": False}},
                           {"add": {"index": name, "alias": alias}}])
    return _keep_newest(engine, alias, name)


class AliasTaken(IndexProblem):
    """Another build created the alias that `sparcode index` was creating."""

    def __init__(self, alias: str, name: str, holders: list[str]):
        super().__init__(f"alias {alias} was created by another build while this one loaded (it serves "
                         f"{', '.join(holders) or 'another index'}); `sparcode index` never moves an alias, so the "
                         f"complete index {name} is kept and serves nothing: delete it, or let "
                         f"`sparcode reindex ... --alias {alias} --delete-old` remove it")


def _claim(engine: Engine, alias: str, name: str) -> str:
    """Create `alias` on `name` unless another build created it since the start check.

    The add marks `name` as the alias's write index, and the server refuses a second write index
    within its atomic update: of two `index` builds claiming one new alias at once, exactly one
    succeeds. A `reindex` moving the alias meanwhile adds without that mark; then both builds
    settle on the newest index, as two swaps do, and this one says so if it is not kept."""
    try:
        _step(engine.update_aliases)([{"add": {"index": name, "alias": alias, "is_write_index": True}}])
    except EngineError as exc:
        if "more than one write index" not in exc.reason:
            raise
        raise AliasTaken(alias, name, _holders_if_readable(engine, alias) or []) from None
    kept = _step(_keep_newest)(engine, alias, name)
    if kept != name:
        raise AliasTaken(alias, name, [kept])
    return name


def _keep_newest(engine: Engine, alias: str, name: str) -> str:
    """Read the holders back after `name` was added: when another build's add landed too, every
    build keeps the newest (versioned names sort by time) and drops the rest, so all agree."""
    holders = engine.alias_holders(alias)
    if len(holders) <= 1:
        return name
    keep = newest(holders)
    engine.update_aliases([{"remove": {"index": other, "alias": alias, "must_exist": False}}
                           for other in holders if other != keep])
    return keep


def newest(indices: list[str]) -> str:
    """The most recently built of an alias's versioned indices (`versioned_name`'s timestamp)."""
    return max(indices, key=_stamp)


def _stamp(name: str) -> str:
    """`versioned_name`'s timestamp, which sorts in time order."""
    return name.rsplit("-", 1)[-1]
