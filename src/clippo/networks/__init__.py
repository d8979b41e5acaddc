"""Neural networks: encoders, recurrent cores, action distributions and the actor-critic."""
