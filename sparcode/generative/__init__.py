"""TIGER generative retrieval (Rajput et al., NeurIPS 2023).

    text.py          item text → sentence embeddings (cached per run)
    rqvae.py         RQ-VAE: embeddings → 3 levels of codes
    semantic_ids.py  unique 4-token IDs, their prefix trie, files on disk
    seq2seq.py       encoder-decoder: history of IDs → next item's ID
    beam.py          trie-constrained beam search, temperature sampling, cold-item prefixes
    train_tiger.py   training, checkpoints, evaluation, one-user search
    config.py        TigerConfig

Entry points for the CLI: `train_tiger.train_tiger`, `train_tiger.evaluate_tiger`,
`train_tiger.TigerSearcher` (one user's search), `train_tiger.build_semantic_ids`. Nothing is imported here, so
importing the package does not load torch.
"""
