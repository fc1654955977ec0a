"""Embeddings: a backbone's features for every image, computed once and cached on disk.

Near-duplicate audits, probes on frozen backbones and ``histoclass embed`` all read them from here.
"""
