"""Analyses of backdoored models: figures and measurements beside the CA/ASR tables."""
