"""r1kit."""
