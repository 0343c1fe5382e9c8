"""Model scans: is a CLIP checkpoint or a prompt learner backdoored, with no trigger known?

Scanners register in ``SCANNERS`` (one file each, ``base.Scanner``'s protocol); ``scan.scan``
runs them and combines their verdicts; ``report`` writes what a user reads.
"""
