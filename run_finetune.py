#!/usr/bin/env python3
"""End-to-end fine-tuning: python run_finetune.py --checkpoint PATH [--config PATH] [--set key=value ...] [--baseline random-init] [--output DIR]"""
import sys

from sslkit.cli import finetune_main

if __name__ == "__main__":
    sys.exit(finetune_main())
