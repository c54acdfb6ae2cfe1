"""Small example models and properties shipped with genbab (the embedded default)."""
