"""The vectors kind: steering vectors from finished steer runs' captures."""
