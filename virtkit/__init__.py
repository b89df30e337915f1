"""virtkit: containers and virtual machines behind one CLI, API and SDK."""

__version__ = "0.1.0"
