"""virtkit.images."""
