"""`sparcode export`: a trained SparCode run → the export directory (docs/export-format.md).

Scoring every (code, item) pair is a dense MLP over codes × items. It reports its pairs/s next
to what the scorer's GEMM could reach on this machine (measured GEMM rate ÷ FLOPs per pair):
the GEMM path's ceiling, which the per-codebook tables (code_tables.py) exceed.
"""
from __future__ import annotations

import gzip
import hashlib
import math
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import orjson
import torch

from sparcode.codes_fallback import CodeTable
from sparcode.encoder import checkpoint as ckpt
from sparcode.encoder.runs import Run, RunError
from sparcode.encoder.serving import Postings, build_postings, check_allocation, code_table, index_sample, \
    postings_per_code
from sparcode.encoder.training_codes import training_codes
from sparcode.staging import (OccupiedTarget, check_export_target, check_replaceable, is_export, is_export_shards,
                              staged_directory)

FORMAT = "sparcode-export/1"


def measure_gemm_rate(model, device, seconds: float = 0.5) -> float:
    """FLOP/s of the scorer's own GEMM block (256 items × 256 codes' matrices) here: the
    ceiling export is compared with."""
    kd = model.scorer.item_tokens * model.scorer.dim + 1  # +1: b1 rides in the GEMM
    a = torch.randn(256, kd, device=device)
    b = torch.randn(kd, 256 * model.scorer.hidden, device=device)
    out = torch.empty(256, b.shape[1], device=device)
    torch.mm(a, b, out=out)
    reps, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        torch.mm(a, b, out=out)
        reps += 1
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 2.0 * a.shape[0] * kd * b.shape[1] * reps / (time.perf_counter() - started)


def item_lines(run: Run, postings: Postings, items: np.ndarray):
    """One JSON line per item in `items`: its {term: score} map and attributes."""
    order = np.argsort(postings.items, kind="stable")
    code_rows = np.repeat(np.arange(len(postings.terms)), np.diff(postings.indptr))[order]
    sorted_items = postings.items[order]
    sorted_scores = postings.scores[order]
    bounds = np.searchsorted(sorted_items, np.arange(postings.n_items + 1))
    dataset = run.dataset
    for item in items:
        lo, hi = bounds[item], bounds[item + 1]
        codes = {postings.terms[r]: float(v) for r, v in zip(code_rows[lo:hi], sorted_scores[lo:hi])}
        attrs = dataset.item_attributes[item] if dataset.item_attributes else {}
        yield orjson.dumps({"item_id": dataset.item_ids[item], "ord": int(item), "codes": codes, **attrs})


def export_run(run: Run, out_dir: Path, bias: float | None = None, max_postings: int | None = None,
               allocation: str | None = None,
               shard: tuple[int, int] = (0, 1), progress: bool = True, force: bool = False) -> dict:
    if run.kind != "sparcode":
        # `export` also takes two-tower and TIGER runs (commands/export.py sends them elsewhere):
        # what reaches here has nothing an index could hold.
        raise RunError(f"only sparcode, two-tower and tiger runs can be exported (ease and all-to-all have no codes "
                       f"or vectors for an index; `sparcode evaluate` scores them); {run.path} was trained with "
                       f"--model {run.kind}")
    index, count = shard
    out_dir = Path(out_dir)
    sharded = count > 1
    _check_target(out_dir, run, force, sharded)  # before minutes of scoring
    if bias is None:
        bias = run.config.serve.bias
    if bias is not None and not math.isfinite(bias):
        raise RunError(f"--bias must be a finite number, not {bias}")
    max_postings = max_postings if max_postings is not None else run.config.serve.max_postings
    if sharded and max_postings is not None:
        # A shard sees only its own items, so n shards capped at N could store n x N per code.
        raise RunError(f"--max-postings / serve.max_postings ({max_postings}) cannot be combined with --shard: "
                       "a shard cannot tell which of a code's items are its best overall; export unsharded")
    allocation = allocation or run.config.serve.allocation
    # What every shard of one export must share: mixed, the merged manifest would describe none.
    settings = {"stored_fraction": run.config.serve.stored_fraction, "query_probes": run.config.serve.query_probes,
                "max_codes": run.config.serve.max_codes, "allocation": allocation, "bias": bias}
    if sharded:
        _check_shard_folder(out_dir, run.fingerprint(), count, settings, force)
    check_allocation(allocation, run.config.serve.stored_fraction, bias)
    started = time.perf_counter()
    fingerprint = run.fingerprint()  # of the files about to be loaded; checked again once scored
    model, device = run.load_model()
    window_codes = training_codes(model, run, device)
    codes = index_sample(window_codes, run.config.serve.max_codes)
    items = np.arange(run.dataset.n_items)[index::count]
    postings = build_postings(model, codes, device, bias, run.config.serve.stored_fraction, max_postings,
                              items=items, progress=progress, allocation=allocation)
    if run.fingerprint() != fingerprint or not (run.path / "run.json").exists():
        # `train --resume` rewrote the run meanwhile: these scores may belong to no saved model.
        raise RunError(f"{run.path} changed while it was exported (is it training again?); export it once "
                       "training has finished (nothing was written)")
    pairs_per_s = len(codes) * len(items) / max(postings.seconds, 1e-9)
    ceiling = measure_gemm_rate(model, device) / model.scorer.flops_per_pair()
    # Only codes with postings go in the table, so a query code without any falls back to the
    # nearest one that has some. A shard sees only its items: it saves every code with its own
    # has-postings flags, and the shard completing the set keeps the codes any shard filled.
    nonempty = postings.nonempty()
    table = code_table(model, codes if sharded else codes[nonempty])

    _check_scores_rank(postings)

    # Build in a temporary sibling, then move into place: a failed export leaves nothing behind.
    # A shard moves its own files into the shared directory instead of replacing it.
    missing: list[int] = []
    with staged_directory(out_dir, replace=not sharded, marker=is_export_shards if force else is_export,
                          check=lambda: _check_target(out_dir, run, force, sharded, again=True)) as tmp:
        items_name = "items.jsonl.gz" if not sharded else f"items.part-{index:05d}-of-{count:05d}.jsonl.gz"
        content = None if sharded else hashlib.sha256()  # a part's lines are not the export's
        with gzip.open(tmp / items_name, "wb", compresslevel=1) as fh:
            for line in item_lines(run, postings, items):
                fh.write(line + b"\n")
                if content is not None:
                    content.update(line + b"\n")
        if sharded:
            np.savez(tmp / "codes.npz", terms=np.asarray(table.terms), vectors=table.vectors,
                     codebooks=table.codebooks, nonempty=nonempty, counts=np.diff(postings.indptr))
        else:
            table.save(tmp / "codes.npz")
        stats = postings.stats()
        stats["codes_with_postings"] = int(nonempty.sum())
        stats["training_codes"] = len(window_codes)
        stats["pairs"] = int(postings.pairs)
        stats["items_without_postings"] = items_without_postings(postings, items)
        stats["stored_fraction"] = postings.pairs / max(len(codes) * len(items), 1)
        manifest = {
            "format": FORMAT,
            "kind": "sparcode",
            "fingerprint": fingerprint,
            "run": {"model": run.kind, "dataset": run.config.dataset, "split": run.config.split, "seed": run.config.seed},
            "quantizer": {"M": run.config.model.codebooks, "N": run.config.model.codes, "dim": run.config.model.dim},
            "tokens_per_user": run.config.model.user_tokens,
            "query_probes": run.config.serve.query_probes,
            "bias": postings.bias,
            "max_postings": max_postings,
            "max_codes": run.config.serve.max_codes,
            "allocation": allocation,
            "items": len(items),
            **stats,
            "item_fields": run.dataset.item_attribute_types,
            "files": {"items": [items_name], "codes": "codes.npz"},
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            **({} if sharded else {"content": _content_digest(content, table, run.config.serve.query_probes)}),
            "export_seconds": round(time.perf_counter() - started, 2),
            "scoring": {
                "method": postings.scored_by,
                "pairs_per_second": round(pairs_per_s),
                "ceiling_pairs_per_second": round(ceiling),
                "fraction_of_ceiling": round(pairs_per_s / ceiling, 3),
                "flops_per_pair": model.scorer.flops_per_pair(),
                "device": str(device),
            },
        }
        if sharded:
            manifest["shard"] = [index, count]
            manifest["shard_settings"] = settings
            missing = _place_shard(tmp, out_dir, items_name, manifest, count, force)
        else:
            ckpt.write_json(tmp / "manifest.json", manifest)
    if missing:
        # Not an export yet: recorded, it would send the next `search --run` to a folder without a manifest.
        return {**manifest, "missing_shards": missing}
    _record_export(run, out_dir)
    return manifest


def _content_digest(items_digest, table: CodeTable, query_probes: int) -> str:
    """What an index built from this export serves, and how it is queried: the same digest for
    an export made again from the same run and settings, so an index of the first still serves
    the second (the gzip and npz files carry their own timestamps and cannot be compared)."""
    for array in (np.asarray(table.terms).astype(str), table.vectors, table.codebooks):
        items_digest.update(np.ascontiguousarray(array).tobytes())
    items_digest.update(f"probes={query_probes}".encode())
    return "sha256:" + items_digest.hexdigest()


def items_without_postings(postings: Postings, items: np.ndarray) -> int:
    """Items of `items` that no code stores a score for: still documents, but no query can
    return them, which the export should say rather than leave to be found by searching."""
    has_posting = np.zeros(postings.n_items, dtype=bool)
    has_posting[postings.items] = True
    return int(np.count_nonzero(~has_posting[items]))


def _check_scores_rank(postings: Postings) -> None:
    """A b̃ so large that FeatureField's 9-bit truncation makes every stored score the same
    leaves the index nothing to rank by: refuse it rather than write it."""
    if postings.pairs > 1 and np.all(postings.scores == postings.scores[0]):
        raise RunError(f"b̃ = {postings.bias:g} swamps the model's scores: after FeatureField's 9-bit "
                       f"truncation all {postings.pairs} stored scores equal {float(postings.scores[0]):g}, "
                       "so the index could not rank; use a smaller --bias")


def _check_target(out_dir: Path, run: Run, force: bool, sharded: bool, again: bool = False) -> None:
    """`check_export_target`, plus what it leaves to the shards: a shard may not go into a complete
    unsharded export without --force (its manifest would stay beside the parts, describing none of
    them), and --force may replace an unfinished sharded export, which holds no manifest.json yet.
    `again`: checked once more just before the swap, as `check_export_target` explains."""
    out_dir = Path(out_dir)
    check_replaceable(out_dir, is_export_shards, protect=[run.path], protected="the run being exported")
    parts = sorted(out_dir.glob("items.part-*.jsonl.gz.manifest.json")) if out_dir.is_dir() else []
    if sharded:
        check_export_target(out_dir, run.path, force=force, sharded=True)
        if not force and is_export(out_dir) and not _is_sharded(ckpt.read_json(out_dir / "manifest.json")):
            raise OccupiedTarget(f"{out_dir} already holds an (unsharded) export; pass --force to replace it")
        return
    if parts and not is_export(out_dir):
        if not force:
            raise OccupiedTarget(f"{out_dir} holds an unfinished sharded export ({len(parts)} parts, no manifest.json "
                                 "yet): finish it with the missing --shard I/N, or pass --force to replace it")
        return
    check_export_target(out_dir, run.path, force=force, again=again)


def _is_sharded(manifest: dict) -> bool:
    return all(str(name).startswith("items.part-") for name in (manifest.get("files") or {}).get("items") or [""])


def _place_shard(tmp: Path, out_dir: Path, items_name: str, manifest: dict, count: int,
                 force: bool = False) -> list[int]:
    """Move one shard's files in; the shard that completes the set writes the merged manifest.
    Returns the shards still missing (none once the export is complete)."""
    # Again: another export may have begun meanwhile. With --force, what belongs to another
    # export goes now, after the scoring succeeded, so a failed shard leaves the old one whole.
    conflicts = _check_shard_folder(out_dir, manifest["fingerprint"], count, manifest["shard_settings"], force)
    for path in conflicts:
        _remove_export_files(out_dir, path)
    out_dir.mkdir(parents=True, exist_ok=True)
    (tmp / items_name).replace(out_dir / items_name)
    codes_part = f"{items_name}.codes.npz"
    (tmp / "codes.npz").replace(out_dir / codes_part)
    ckpt.write_json(out_dir / f"{items_name}.manifest.json", manifest)
    parts = sorted(out_dir.glob("items.part-*.jsonl.gz.manifest.json"))
    same = [ckpt.read_json(p) for p in parts]
    same = [m for m in same if m["fingerprint"] == manifest["fingerprint"] and m["shard"][1] == count]
    missing = sorted(set(range(count)) - {m["shard"][0] for m in same})
    if missing:
        return missing
    same.sort(key=lambda m: m["shard"][0])
    merged = dict(manifest)
    merged.pop("shard")
    merged["items"] = sum(m["items"] for m in same)
    merged["pairs"] = sum(m["pairs"] for m in same)
    if all("items_without_postings" in m for m in same):
        merged["items_without_postings"] = sum(m["items_without_postings"] for m in same)
    else:  # parts from before the count was recorded: one part's count is not the whole's
        merged.pop("items_without_postings", None)
    merged["stored_fraction"] = merged["pairs"] / max(merged["codes"] * merged["items"], 1)
    merged["files"] = {"items": [m["files"]["items"][0] for m in same], "codes": "codes.npz"}
    merged["codes_with_postings"], counts = _merge_code_tables(out_dir, merged["files"]["items"])
    if counts is not None:
        merged["postings_per_code"] = postings_per_code(counts)
    else:  # parts from before their counts were saved: no part's own statistics describe the whole
        merged.pop("postings_per_code", None)
    # Each shard scored on its own (perhaps on other machines, at other times): the total work
    # is their sum, and what each one measured stays beside it.
    merged["export_seconds"] = round(sum(m.get("export_seconds", 0.0) for m in same), 2)
    merged["shard_exports"] = [{"shard": m["shard"][0], "created": m.get("created"),
                                "export_seconds": m.get("export_seconds"), "scoring": m.get("scoring")}
                               for m in same]
    if all((m.get("scoring") or {}).get("pairs_per_second") for m in same):
        seconds = sum(merged["codes"] * m["items"] / m["scoring"]["pairs_per_second"] for m in same)
        rate = merged["codes"] * merged["items"] / max(seconds, 1e-9)
        ceiling = max(manifest["scoring"]["ceiling_pairs_per_second"], 1)
        merged["scoring"] = {**manifest["scoring"], "pairs_per_second": round(rate),
                             "fraction_of_ceiling": round(rate / ceiling, 3)}
    ckpt.write_json(out_dir / "manifest.json", merged)
    return []


def _remove_export_files(out_dir: Path, manifest_path: Path) -> None:
    """The files of another export that --force replaces: those a manifest names, and itself."""
    try:
        other = ckpt.read_json(manifest_path)
    except (OSError, ValueError):
        other = {}
    files = other.get("files") or {}
    names = list(files.get("items") or []) + [v for k, v in files.items() if k != "items" and isinstance(v, str)]
    if manifest_path.name != "manifest.json":  # a part: its items file and code table
        part = manifest_path.name.removesuffix(".manifest.json")
        names = [part, f"{part}.codes.npz"]
    for name in names:
        if "/" not in str(name):  # a hand-edited manifest never sends a delete outside the folder
            (out_dir / name).unlink(missing_ok=True)
    manifest_path.unlink(missing_ok=True)


def _check_shard_folder(out_dir: Path, fingerprint: str, count: int, settings: dict,
                        force: bool = False) -> list[Path]:
    """The shards of one export share a folder. Parts of another model's export, of a split
    into another number of shards, or made with other serve settings (stored fraction, probes,
    code sample, allocation, b̃) would stay beside ours and end up in (or under) a manifest
    that describes none of them, so they are refused before any work; with `force`, the
    manifests of what --force replaces are returned instead (an unsharded export's among them)."""
    if not out_dir.is_dir():
        return []
    found = [out_dir / "manifest.json"] if (out_dir / "manifest.json").is_file() else []
    conflicts = []
    for path in found + sorted(out_dir.glob("items.part-*.jsonl.gz.manifest.json")):
        other = ckpt.read_json(path)
        if path.name == "manifest.json" and not _is_sharded(other):
            if not force:
                raise RunError(f"{out_dir} already holds an (unsharded) export; pass --force to replace it")
            conflicts.append(path)
            continue
        # A part names its count; a merged manifest (which drops "shard") lists one file per part.
        shards = other["shard"][1] if other.get("shard") else len((other.get("files") or {}).get("items") or []) or count
        if force and (other.get("fingerprint") != fingerprint or shards != count or any(
                (other.get("shard_settings") or settings).get(key) != settings[key] for key in settings)):
            conflicts.append(path)
            continue
        if other.get("fingerprint") != fingerprint or shards != count:
            raise RunError(f"{out_dir} holds parts of another export ({path.name}: model "
                           f"{str(other.get('fingerprint'))[:12]}…, {shards} shards); put these {count} shards "
                           "in a new folder")
        theirs = other.get("shard_settings") or settings  # parts from before settings were recorded
        differ = [key for key in settings if theirs.get(key) != settings[key]]
        if differ:
            shown = ", ".join(f"{key} {theirs.get(key)!r} there, {settings[key]!r} here" for key in differ)
            raise RunError(f"{out_dir} holds parts exported with other settings ({path.name}: {shown}); "
                           "export every shard with the same settings, or use a new folder")
    return conflicts


def _merge_code_tables(out_dir: Path, item_files: list[str]) -> tuple[int, np.ndarray | None]:
    """codes.npz for a complete sharded export: the codes that have postings in any shard; and
    each code's postings over every shard (None when a part predates saving them)."""
    parts = [np.load(out_dir / f"{name}.codes.npz", allow_pickle=False) for name in item_files]
    first = parts[0]
    keep = np.logical_or.reduce([p["nonempty"] for p in parts])
    CodeTable(first["terms"][keep], first["vectors"][keep], first["codebooks"]).save(out_dir / "codes.npz")
    counts = np.sum([p["counts"] for p in parts], axis=0) if all("counts" in p for p in parts) else None
    return int(keep.sum()), counts


def _record_export(run: Run, out_dir: Path) -> None:
    """A convenience for `search` without --export: in a read-only run folder (a shared model
    store) the export is still made, and search then needs --export."""
    try:
        ckpt.write_json(run.path / "last_export.json", {"path": str(Path(out_dir).resolve())})
    except OSError:
        pass
