"""Agent tools, built lazily."""
