"""Benchmark matrices: every attack x every defense, detector and scanner, as ordinary runs.

``spec`` reads a ``kind: matrix`` recipe and expands it into cells (one recipe each);
``launch`` runs the missing cells in this process or as jobs through submitit.
"""
