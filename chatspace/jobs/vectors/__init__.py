"""The vectors job type: steering vectors from finished steer runs' captures."""
