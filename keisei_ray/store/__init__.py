"""What a run leaves on disk: checkpoints (atomic, verified, resumable) and model files."""
