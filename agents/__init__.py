"""Ready-made actors."""
