"""virtkit.client."""
