"""genofed.federated."""
