"""Evaluation of backbones: frozen-feature extraction (the online kNN and run_lincls) and
end-to-end fine-tuning (run_finetune: the loop, its setup, the classifier and its step)."""
