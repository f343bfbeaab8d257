"""Meta-RL agents and the baselines they are compared against."""
