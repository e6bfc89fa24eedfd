"""Meshcast gateway benchmark (see bench/run.py)."""
