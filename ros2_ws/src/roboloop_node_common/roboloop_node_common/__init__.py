"""Shared by every roboloop node: parameters, the lifecycle main, /diagnostics."""
