"""Benchmarks: asyncflow's per-task cost next to the plain asyncio / concurrent.futures floor.

Run ``python -m benchmarks [--quick] [--json FILE]``; see ``benchmarks/README.md``. Each workload
module has one ``run(config)`` that returns report rows; ``__main__`` prints them as a table.
"""
