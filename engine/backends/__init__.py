"""genofed.engine.backends."""
