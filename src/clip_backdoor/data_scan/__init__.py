"""Training-data scans: which image-caption pairs of a training mix are poisoned?

Pair detectors register in ``DATA_DETECTORS`` (one file each, ``base.PairDetector``'s protocol):
each scores every pair from a model's image and caption embeddings, higher = more suspect.
"""
