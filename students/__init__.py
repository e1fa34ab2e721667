"""students package."""
