"""Linear-probe evaluation of pretrained backbones."""
