"""virtkit.core."""
