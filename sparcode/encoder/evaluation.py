"""`sparcode evaluate` for trained models: score test users exactly as they will be served.

SparCode is scored from the same postings the export writes (quantized codes, ReLU(S + b̃),
9-bit truncation, nearest-code fallback): the number printed is the number the index gives.
"""
from __future__ import annotations

import numpy as np

from sparcode.encoder.runs import Run
from sparcode.codes_fallback import CodeTable
from sparcode.encoder.serving import build_postings, code_table, index_sample, user_queries
from sparcode.encoder.training_codes import training_codes
from sparcode.encoder.train import model_scores
from sparcode.eval.harness import evaluate_scores


class Unquantized:
    """The model with its user tokens left unquantized: what its scorer does on continuous input."""

    def __init__(self, model):
        self.model = model

    def __getattr__(self, name):
        return getattr(self.model, name)

    def encode_users(self, users, histories):
        return self.model.pre_quantization_tokens(users, histories)


def served_queries(model, run: Run, evalset, device, table: CodeTable, probes: int | None = None) -> list[dict[str, float]]:
    return user_queries(model, evalset.users, evalset.histories, device, table, probes or run.config.serve.query_probes)


def load_for_serving(run: Run) -> tuple:
    """(model, device, indexed codes): what serving a run needs before any serve setting applies."""
    model, device = run.load_model()
    return model, device, training_codes(model, run, device)


class ServedIndex:
    """A run's postings and code table as `sparcode export` would write them, held in memory."""

    def __init__(self, run: Run, progress: bool = False, loaded: tuple | None = None):
        self.run = run
        self.model, self.device, self.training_codes = loaded or load_for_serving(run)
        serve = run.config.serve
        self.codes = index_sample(self.training_codes, serve.max_codes)
        self.postings = build_postings(self.model, self.codes, self.device, serve.bias, serve.stored_fraction,
                                       serve.max_postings, progress=progress, allocation=serve.allocation)
        # A code whose every score fell below b̃ would serve nothing; like an unseen code, it falls
        # back to the nearest code that has postings (the export's code table does the same).
        self.table = code_table(self.model, self.codes[self.postings.nonempty()])

    def queries(self, evalset) -> list[dict[str, float]]:
        return served_queries(self.model, self.run, evalset, self.device, self.table)

    def score_fn(self, queries: list[dict[str, float]]):
        """score_fn for the harness: what the engine sums per item, -inf where no term matches."""
        return lambda rows: np.stack([self.postings.user_scores(self.table, queries[r]) for r in rows])


def evaluate_sparcode_served(run: Run, evalset, exclude_seen: bool, progress: bool = False,
                             loaded: tuple | None = None, return_scores: bool = False) -> tuple:
    """→ (metrics, rankings), and the rankings' scores third with `return_scores`;
    `loaded` = `load_for_serving(run)`, for a caller that serves one model several ways."""
    index = ServedIndex(run, progress, loaded)
    queries = index.queries(evalset)
    metrics, rankings, scores = evaluate_scores(index.score_fn(queries), evalset, run.dataset.n_items,
                                                exclude_seen=exclude_seen, return_scores=True)
    user_terms = {t for q in queries for t in q}
    fallback = sum(1 for q in queries for t in q if t not in index.table)
    metrics.update(index.postings.stats())
    metrics.update({
        "bias": index.postings.bias,
        "codes_used": len(user_terms),
        "query_probes": run.config.serve.query_probes,
        "query_terms_without_postings": fallback,
        "training_codes": len(index.training_codes),
        "codebook_utilisation": _codebook_utilisation(index.codes, run.config.model.codes),
    })
    return (metrics, rankings, scores) if return_scores else (metrics, rankings)


def _codebook_utilisation(codes: np.ndarray, n: int) -> list[float]:
    return [round(len(np.unique(codes[:, m])) / n, 4) for m in range(codes.shape[1])]


def evaluate_model_scores(run: Run, evalset, exclude_seen: bool) -> tuple[dict, list, list]:
    """→ (metrics, rankings, their scores)."""
    model, device = run.load_model()
    return evaluate_scores(model_scores(model, evalset, device), evalset, run.dataset.n_items,
                           exclude_seen=exclude_seen, return_scores=True)
