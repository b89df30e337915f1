"""Freestanding guest programs for the native-VMM tests, and their build helper (build.py)."""
