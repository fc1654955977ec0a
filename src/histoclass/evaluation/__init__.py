"""Evaluation: metrics, plots, the HTML report, and side-by-side comparison of runs."""
