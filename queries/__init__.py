"""genofed.queries."""
