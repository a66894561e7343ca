"""Read an export directory (docs/export-format.md): the only thing the pipeline knows of a model."""
from __future__ import annotations

import gzip
import stat
import zipfile
import zlib
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Iterator

import numpy as np
import orjson

from sparcode.codes_fallback import CodeTable
from sparcode.errors import SparcodeError
from sparcode.featurefield import MIN_STORABLE

FORMAT = "sparcode-export/1"
FLOAT32_MAX = float(np.finfo(np.float32).max)
FIELD_TYPES = ("keyword", "text", "integer", "float")
# Manifest keys copied into the index `_meta`, so an index says what it serves.
SUMMARY_KEYS = ("format", "kind", "run", "quantizer", "tokens_per_user", "bias", "max_postings",
                "items", "codes", "pairs", "stored_fraction", "created", "content")


def same_export(built_from: dict, export: dict) -> bool:
    """Whether two export summaries describe the same postings and code table. `content` (a
    digest of the items' lines, the code table and the query probes) says so even for an export
    made again into the same folder (`export --force` of the same run and settings); exports
    from before it are told apart by when they were made."""
    if built_from.get("content") and export.get("content"):
        return built_from["content"] == export["content"]
    return all(built_from.get(key) == export.get(key) for key in ("created", "codes", "pairs"))


class ExportError(SparcodeError, ValueError):
    """The export directory is missing, malformed, or holds a value the engine cannot store."""


@dataclass(frozen=True)
class Export:
    path: Path

    @classmethod
    def open(cls, path) -> "Export":
        path = Path(path)
        if not (path / "manifest.json").is_file():
            raise ExportError(f"{path} is not an export directory (no manifest.json)")
        export = cls(path)
        before = _stat_of(path), _stat_of(path / "manifest.json")  # what the manifest below is read from
        manifest = export.manifest
        if manifest.get("format") != FORMAT:
            raise ExportError(f"{path}: format {manifest.get('format')!r}, expected {FORMAT!r}")
        for key in ("fingerprint", "items", "files"):
            if key not in manifest:
                raise ExportError(f"{path}/manifest.json lacks {key!r}")
        if not isinstance(manifest["fingerprint"], str) or not manifest["fingerprint"]:
            raise ExportError(f"{path}/manifest.json: 'fingerprint' must be the model's fingerprint string, "
                              f"not {manifest['fingerprint']!r}")
        items = manifest["items"]
        if not isinstance(items, int) or isinstance(items, bool) or items < 0:
            raise ExportError(f"{path}/manifest.json: 'items' must be a count, not {items!r}")
        export.item_fields  # validates the declared types early
        export.query_probes
        export.check_files()
        if export.opened_as[:2] != before:  # replaced while the manifest was read: it may be the old one's
            raise ExportError(f"{path} was replaced while it was being opened (another `sparcode export --force` "
                              "into it?); open it again")
        return export

    @cached_property
    def opened_as(self) -> tuple:
        """The folder and the files of this export as first read: `export --force` swaps in a new
        folder (and a sharded export's merge renames files into the old one), so a new inode or
        size, or a new modification time, means another export is now where this one was."""
        return self._stamp()

    def _stamp(self) -> tuple:
        names = ["manifest.json", *self.manifest["files"]["items"]]
        if self._codes_path.is_file():
            names.append(self._codes_path.name)
        return tuple(_stat_of(target) for target in (self.path, *(self.path / name for name in names)))

    def check_unchanged(self) -> None:
        """ExportError when the export was replaced since it was opened: the manifest held in
        memory would then describe files that are no longer the ones read (a reader that reads the
        folder in several passes cannot tell one export's items from another's)."""
        if self._stamp() != self.opened_as:
            raise ExportError(f"{self.path} was replaced while it was being read (another `sparcode export "
                              "--force` into it?); what was read may mix the two exports")

    def check_files(self) -> None:
        """Every file the manifest promises is there (a SparCode export's code table included)."""
        files = self.manifest["files"]
        if not isinstance(files, dict) or not isinstance(files.get("items"), list) or not all(
                isinstance(n, str) and n for n in files["items"]):
            raise ExportError(f"{self.path}/manifest.json: 'files' must name a list of items files")
        promised = list(files["items"])
        for role, name in files.items():
            if role == "items":
                continue
            if not isinstance(name, str) or not name:
                raise ExportError(f"{self.path}/manifest.json: files.{role} must be a file name, not {name!r}")
            promised.append(name)
        if self.manifest.get("kind", "sparcode") == "sparcode" and "codes" not in files:
            promised.append("codes.npz")
        for name in promised:
            if not (self.path / name).is_file():
                raise ExportError(f"{self.path} is incomplete: {name}, which its manifest.json lists, is missing")

    @cached_property
    def manifest(self) -> dict:
        try:
            manifest = orjson.loads((self.path / "manifest.json").read_bytes())
        except orjson.JSONDecodeError as exc:
            raise ExportError(f"{self.path}/manifest.json is not JSON: {exc}") from None
        if not isinstance(manifest, dict):
            raise ExportError(f"{self.path}/manifest.json is not a JSON object")
        return manifest

    @property
    def fingerprint(self) -> str:
        return str(self.manifest["fingerprint"])

    @property
    def n_items(self) -> int:
        return int(self.manifest["items"])

    @cached_property
    def item_fields(self) -> dict[str, str]:
        """Attribute name -> ES type; a list type (multi-valued) maps to its element type."""
        fields = {}
        for name, kind in (self.manifest.get("item_fields") or {}).items():
            kind = kind[0] if isinstance(kind, list) and kind else kind
            if kind not in FIELD_TYPES:
                raise ExportError(f"item field {name!r} has type {kind!r}; expected one of {FIELD_TYPES}")
            fields[name] = kind
        return fields

    @property
    def query_probes(self) -> int | None:
        """Codes each user token queries, as chosen when this export was made (None if unrecorded)."""
        probes = self.manifest.get("query_probes")
        if probes is not None and (not isinstance(probes, int) or isinstance(probes, bool) or probes < 1):
            raise ExportError(f"{self.path}/manifest.json: 'query_probes' must be a count ≥ 1, not {probes!r}")
        return probes

    def summary(self) -> dict:
        return {k: self.manifest[k] for k in SUMMARY_KEYS if k in self.manifest}

    def code_table(self) -> CodeTable:
        try:
            return CodeTable.load(self._codes_path)
        except FileNotFoundError:
            raise ExportError(f"{self.path} is incomplete: {self._codes_path.name} is missing") from None
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as exc:
            raise ExportError(f"{self._codes_path} is not a readable code table ({type(exc).__name__}); "
                              "export it again") from None

    def indexed_terms(self) -> list[str]:
        """The pseudo-terms items carry; none for an export without a code table (semantic IDs)."""
        return self.code_table().terms if self._codes_path.is_file() else []

    @property
    def _codes_path(self) -> Path:
        return self.path / self.manifest["files"].get("codes", "codes.npz")

    def numbered_lines(self) -> Iterator[tuple[str, int, bytes]]:
        """(file name, line number, raw JSON line) of every items file, in manifest order.

        A truncated or corrupt gzip file is an ExportError naming the file: left alone, gzip's
        EOFError reaches click, which takes it for Ctrl-D and prints only "Aborted!"."""
        for name in self.manifest["files"]["items"]:
            number = 0
            try:
                with gzip.open(self.path / name, "rb") as fh:
                    for number, line in enumerate(fh, 1):
                        if line.strip():
                            yield name, number, line
            except EOFError:
                raise ExportError(f"{self.path / name} is truncated (gzip stream ends after line {number}); "
                                  "export it again") from None
            except (gzip.BadGzipFile, zlib.error) as exc:
                raise ExportError(f"{self.path / name} is not a readable gzip file "
                                  f"(after line {number}: {exc}); export it again") from None

    def lines(self) -> Iterator[bytes]:
        """Raw JSON lines of every items file, in manifest order."""
        for _, _, line in self.numbered_lines():
            yield line

    def items(self) -> Iterator[dict]:
        for name, number, line in self.numbered_lines():
            try:
                item = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise ExportError(f"{self.path / name}, line {number}: not JSON ({exc})") from None
            if not isinstance(item, dict):
                raise ExportError(f"{self.path / name}, line {number}: expected a JSON object, "
                                  f"got {type(item).__name__}")
            yield item

    def validate(self) -> int:
        """Check every item before anything is sent (`checked_items`). Returns the count."""
        return sum(1 for _ in self.checked_items())

    def checked_items(self) -> Iterator[dict]:
        """The items, each checked before it is yielded: ids unique, ords a permutation of the
        items (they break score ties, and the embedded backend indexes arrays by them), codes a
        map of storable scores over terms of the code table (a term the mapping does not know
        would fail mid-load and leave a partial index), no undeclared fields; and as many items
        as the manifest says."""
        seen: set[str] = set()
        ords: set[int] = set()
        known = set(self.indexed_terms()) or None
        for item in self.items():
            item_id = item.get("item_id")
            if not isinstance(item_id, str) or not item_id:
                raise ExportError(f"item with ord {item.get('ord')!r} has no string item_id")
            if item_id in seen:
                raise ExportError(f"item {item_id!r} appears twice")
            seen.add(item_id)
            ord_ = item.get("ord")
            if not isinstance(ord_, int) or isinstance(ord_, bool) or not 0 <= ord_ < self.n_items or ord_ in ords:
                raise ExportError(f"item {item_id!r}: ord {ord_!r} is not a new whole number below {self.n_items}")
            ords.add(ord_)
            codes = item.get("codes") or {}
            if not isinstance(codes, dict):
                raise ExportError(f"item {item_id!r}: codes must be a map of term to score, not {type(codes).__name__}")
            check_codes(item_id, codes)
            if known is not None and not known.issuperset(codes):
                unknown = sorted(set(codes) - known)[0]
                raise ExportError(f"item {item_id!r}: term {unknown!r} is not in the export's code table")
            extra = set(item) - {"item_id", "ord", "codes"} - set(self.item_fields)
            if extra:
                raise ExportError(f"item {item_id!r} has undeclared fields {sorted(extra)}")
            yield item
        if len(seen) != self.n_items:
            raise ExportError(f"{self.path}: manifest says {self.n_items} items, files hold {len(seen)}")


def _stat_of(path: Path) -> tuple | None:
    """What tells one file (or folder) from the one that replaced it at the same path."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    if stat.S_ISDIR(st.st_mode):  # a swap brings a new folder; files written into this one change only its times
        return st.st_dev, st.st_ino
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def check_codes(item_id: str, codes: dict) -> None:
    """FeatureField rejects values <= 0, subnormal or non-finite: name the item and term up front."""
    for term, value in codes.items():
        # Plain comparisons: this runs once per stored pair, millions of times per export.
        if not (isinstance(value, (int, float)) and MIN_STORABLE <= value <= FLOAT32_MAX):
            raise ExportError(f"item {item_id!r}, term {term!r}: score {value!r} cannot be stored "
                              "(must be a finite positive normal float32)")
