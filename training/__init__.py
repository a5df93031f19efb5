"""Tools that make and measure the embedded toy model (run from the repository root; not part of the package)."""
