"""From images to views: the photometric spec and its per-view worker ops, the pretraining
input of a config, the augmentation grid, and the training views of labelled images (the
linear probe's and fine-tuning's)."""
