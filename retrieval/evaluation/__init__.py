"""Measuring embeddings: retrieval and verification metrics (`metrics`, what calibration and the benchmarks
score with), seeded few-shot episodes (`episodes`), Lake's one-shot runs (`lake`, `lake_runs`), scoring a
labelled set (`labelled`) and confidence intervals (`stats`). Import the module you need: this package imports
none of them, so that the metrics come without torch."""
