"""Training: recipes, losses, the Lightning module, the `train()` entry point and run records."""
