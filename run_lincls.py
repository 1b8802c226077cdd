#!/usr/bin/env python3
"""Linear evaluation: python run_lincls.py --checkpoint PATH [--config PATH] [--set key=value ...]"""
import sys

from sslkit.cli import lincls_main

if __name__ == "__main__":
    sys.exit(lincls_main())
