"""genofed.engine."""
