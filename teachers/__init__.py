"""teachers package."""
