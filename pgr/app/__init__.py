"""The application: the `pgr` command, the wiring of the stages and the pipeline benchmarks.

It sits above the contracts (the rest of `pgr/`) and may import every stage; no contract imports it.
"""
