"""virtkit.store."""
