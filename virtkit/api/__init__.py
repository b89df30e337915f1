"""virtkit.api."""
