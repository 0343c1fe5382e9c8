"""Summary tables in ``results/`` from run folders: one module per table, ``summary`` runs them."""
