"""genofed.privacy.secure."""
