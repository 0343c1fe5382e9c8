"""What every layer uses: errors, typed configs, registries, precision, seeding, run folders.

The bottom layer (``pyproject.toml``'s import-linter contract): it imports nothing else of the
package, so any module may import it.
"""
