"""From images to the two views: the photometric spec and its per-view worker ops, the
pretraining input of a config, the augmentation grid."""
