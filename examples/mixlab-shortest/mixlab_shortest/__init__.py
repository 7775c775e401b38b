"""An example third-party mixlab plugin package."""
