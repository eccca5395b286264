"""Data: audio, the corpus and its folds, batches, frozen features and their cache, normalisation."""
