"""Placeholder until its room lands."""
