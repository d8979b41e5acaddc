"""Pure functions and types that everything else builds on: advantages, losses, observations, errors."""
