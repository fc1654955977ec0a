"""Near-duplicate audit: which images are copies of one another (augmented copies, neighbouring patches,
re-scans), found from the pixels alone, so splits keep copies together and scores say when they leak."""
