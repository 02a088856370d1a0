"""Ray actor roles that play games: self-play workers and evaluation workers."""
