"""Decoding semantic IDs: trie-constrained beam search, temperature sampling, cold-item prefixes.

At every level only tokens that extend a beam to a prefix of some real item are allowed, so
every finished beam is an item and no invalid IDs have to be filtered (and K beams give K
items). Log-probabilities are renormalised over the allowed tokens.

With `exclude` (seen items per row), a token is masked at every level when every item below
the prefix it makes was seen, so no beam is spent on a prefix that can only end in a seen item
and the K beams are K unseen items (as long as the catalog has K).

With `temperatures` (one per level), each step keeps a sample instead of the best: Gumbel-top-k
on the temperature-scaled scores, i.e. sampling continuations without replacement. T → 0
approaches beam search; larger T spreads the top-K over more prefixes (the diversity study).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from sparcode.generative.semantic_ids import PrefixTrie
from sparcode.generative.seq2seq import BOS


@torch.no_grad()
def beam_search(model, memory: torch.Tensor, memory_mask: torch.Tensor, trie: PrefixTrie, beam_size: int,
                exclude: list[np.ndarray] | None = None, temperatures=None,
                generator: torch.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
    """→ items (B, beam_size) int64 best first (-1 where fewer items exist) and their log-probs.

    ``model`` needs ``decode(memory, mask, prefix)``, ``level_logits(hidden, level)`` and
    ``tokens(codes)``; anything with those (a test double, too) can be searched."""
    device = memory.device
    batch = memory.shape[0]
    levels = trie.levels
    children = [torch.as_tensor(table, device=device) for table in trie.children]
    if temperatures is not None and len(temperatures) != levels:
        raise ValueError(f"need one temperature per level ({levels}), got {len(temperatures)}")
    exhausted = _exhausted(trie, exclude, device) if exclude else None

    nodes = torch.zeros(batch, 1, dtype=torch.long, device=device)
    scores = torch.zeros(batch, 1, device=device)
    codes = torch.zeros(batch, 1, 0, dtype=torch.long, device=device)
    for level in range(levels):
        width = nodes.shape[1]
        flat_nodes = nodes.reshape(-1)
        prefix = torch.cat([torch.full((batch * width, 1), BOS, dtype=torch.long, device=device),
                            model.tokens(codes.reshape(batch * width, level))], dim=1)
        hidden = model.decode(memory.repeat_interleave(width, 0), memory_mask.repeat_interleave(width, 0), prefix)
        logits = model.level_logits(hidden[:, -1], level).float()
        nxt = children[level][flat_nodes]  # (B*w, V)
        allowed = nxt >= 0
        if exhausted is not None:
            rows = torch.arange(batch, device=device).repeat_interleave(width)
            allowed &= ~exhausted[level][rows[:, None], nxt + 1]
        if temperatures is not None:
            logits = logits / max(float(temperatures[level]), 1e-6)
        logp = torch.log_softmax(logits.masked_fill(~allowed, float("-inf")), dim=-1)
        # Rows with nothing allowed (dead beams) come out NaN; nan_to_num would turn -inf finite.
        logp = logp.masked_fill(torch.isnan(logp), float("-inf"))
        vocab = logp.shape[1]
        total = (scores.reshape(-1, 1) + logp).reshape(batch, width * vocab)
        keep = min(beam_size, width * vocab)
        if temperatures is not None:
            gumbel = -torch.log(-torch.log(torch.rand(total.shape, generator=generator).clamp(1e-20, 1.0)))
            pick = torch.topk(total + gumbel.to(device), keep, dim=1).indices
            new_scores = torch.gather(total, 1, pick)
        else:
            new_scores, pick = torch.topk(total, keep, dim=1)
        parent, token = pick // vocab, pick % vocab
        parent_nodes = torch.gather(nodes, 1, parent)
        nodes = children[level][parent_nodes, token]
        codes = torch.cat([torch.gather(codes, 1, parent[:, :, None].expand(-1, -1, level)), token[:, :, None]], dim=2)
        scores = new_scores
    items = torch.where(torch.isfinite(scores), nodes, torch.full_like(nodes, -1))
    if temperatures is not None:
        # Keep the sampled order, but finished items never sit behind dead beams.
        order = torch.argsort((~torch.isfinite(scores)).to(torch.int8), dim=1, stable=True)
        items, scores = torch.gather(items, 1, order), torch.gather(scores, 1, order)
    if items.shape[1] < beam_size:
        pad = beam_size - items.shape[1]
        items = torch.cat([items, torch.full((batch, pad), -1, dtype=torch.long, device=device)], dim=1)
        scores = torch.cat([scores, torch.full((batch, pad), float("-inf"), device=device)], dim=1)
    return items.cpu().numpy(), scores.cpu().numpy()


def _exhausted(trie: PrefixTrie, exclude: list[np.ndarray], device) -> list[torch.Tensor]:
    """Per level, (rows, nodes + 1): True where every item below the node was seen by that row.
    Column 0 stands for "no node" (-1 shifted by one) and is never set."""
    paths, below = trie.item_paths, trie.items_below
    masks = []
    for level in range(trie.levels):
        mask = np.zeros((len(exclude), len(below[level]) + 1), dtype=bool)
        for row, seen in enumerate(exclude):
            seen = np.unique(np.asarray(seen, dtype=np.int64))
            if len(seen):
                nodes, count = np.unique(paths[seen, level], return_counts=True)
                mask[row, nodes[count == below[level][nodes]] + 1] = True
        masks.append(torch.as_tensor(mask, device=device))
    return masks


class ColdIndex:
    """Cold items (never a training target) by the prefixes of their semantic IDs.

    The model never saw a cold item as a target, so it seldom emits a cold item's full ID (it
    can: cold items stay in the trie, and `evaluate` counts those as cold_recall@10_generated),
    but it does emit IDs of similar warm items; cold items sharing (c0, c1, c2), or failing that
    (c0, c1), with a generated ID are its best content-based guesses (TIGER §4.3)."""

    def __init__(self, ids: np.ndarray, cold_items: np.ndarray, depth: int = 3):
        self.ids = np.asarray(ids, dtype=np.int64)
        self.depths = [d for d in (depth, depth - 1) if d >= 1]
        self.by_prefix: list[dict[tuple, list[int]]] = []
        for d in self.depths:
            table: dict[tuple, list[int]] = {}
            for item in np.sort(np.asarray(cold_items, dtype=np.int64)):
                table.setdefault(tuple(self.ids[item, :d].tolist()), []).append(int(item))
            self.by_prefix.append(table)

    def candidates(self, generated: np.ndarray, skip: set[int]) -> list[int]:
        """Cold items matching the generated items' prefixes, deeper matches and better beams first."""
        out: list[int] = []
        taken = set(skip)
        for d, table in zip(self.depths, self.by_prefix):
            for item in generated:
                if item < 0:
                    continue
                for cold in table.get(tuple(self.ids[item, :d].tolist()), ()):
                    if cold not in taken:
                        taken.add(cold)
                        out.append(cold)
        return out

    def mix(self, ranked: np.ndarray, k: int, slots: float, seen: np.ndarray | None = None,
            lookup=None) -> np.ndarray:
        """Top-k with up to floor(slots·k) of its last places given to prefix-matched cold items.

        ``lookup(generated, skip, limit)`` replaces the in-process match with another source of
        the same ordered candidates (the Elasticsearch `sid` index, `pipeline/sid_search.py`)."""
        ranked = np.asarray(ranked, dtype=np.int64)
        ranked = ranked[ranked >= 0]
        skip = set(ranked[:k].tolist()) | (set(np.asarray(seen).tolist()) if seen is not None else set())
        # Floor, so cold items never take more than their share: rounding up gave one of k = 1..10
        # places to them at the default 10 %, replacing the model's only answer at k = 1. The
        # epsilon keeps 0.29·100 (28.999…96 in floating point) at 29.
        limit = math.floor(slots * k + 1e-9)
        cold = lookup(ranked[:k], skip, limit) if lookup is not None else self.candidates(ranked[:k], skip)[:limit]
        if not cold:
            return ranked[:k]
        return np.concatenate([ranked[:k - len(cold)], np.asarray(cold, dtype=np.int64)])
