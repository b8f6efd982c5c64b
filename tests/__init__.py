"""cpt-launch tests (a package, so that nemo_toolkit's stray top-level `tests` package cannot shadow it)."""
