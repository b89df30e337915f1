"""virtkit.cli."""
