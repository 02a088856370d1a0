"""The game: rules on cshogi, notation, compact state, action map, vectorised env, opponents."""
