"""Evaluation of frozen backbones: feature extraction (the online kNN and run_lincls)."""
