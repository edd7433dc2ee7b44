"""Operator tasks above the store: backup and restore, mailbox import and export.

The CLI (exmaild/cli_ops.py) parses arguments and prints; the work is here.
"""
