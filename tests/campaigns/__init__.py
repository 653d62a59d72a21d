"""Reliability campaigns: long, scripted attempts to break the appliance (docs/reliability.md).

Each module runs as ``python -m tests.campaigns.NAME --help``; the CI runs a short slice of
each through the same code from a pytest test.
"""
