"""Sandbox policies and transforms."""
