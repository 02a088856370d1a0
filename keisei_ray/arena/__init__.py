"""Playing and rating: matches, background evaluation, Elo, the ladder, USI, terminal play."""
