"""``pushy bench``: a protocol-accurate simulated fleet and the scenarios that measure the server.

Benchmarks print numbers and write them as JSON under ``bench/results/``; they never assert.
"""
