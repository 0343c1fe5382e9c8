"""Analyses of backdoored models: figures and measurements beside the CA/ASR tables.

Analyses that run as recipe stages (``kind: analysis``) register in ``ANALYSES``.
"""
