"""Networks: backbones (torchvision ResNet / ViT without classifier), heads, BatchFormer."""
