"""virtkit.container."""
