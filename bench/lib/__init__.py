"""Helpers shared by the benchmark scripts under bench/ (statistics, host facts, process memory, cleanup)."""
