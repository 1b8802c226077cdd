#!/usr/bin/env python3
"""Self-supervised pretraining: python run_pretrain.py [--config PATH] [--set key=value ...] [--resume | --auto-resume]"""
import sys

from sslkit.cli import pretrain_main

if __name__ == "__main__":
    sys.exit(pretrain_main())
