"""genofed.privacy."""
