"""Adapting a trained run to a new source: normalisation statistics from unlabelled images,
fine-tuning on a few labelled ones; the result is a new run directory that records its parent."""
