"""sslkit: MoCo-v2 / MoCo-v3 self-supervised pretraining with BatchFormer, device-side
kornia augmentation, FAISS kNN and linear-probe evaluation."""
__version__ = "0.1.0"
