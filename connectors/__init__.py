"""genofed.connectors."""
