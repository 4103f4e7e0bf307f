"""genofed.genomics."""
