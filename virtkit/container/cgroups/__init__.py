"""virtkit.container.cgroups."""
