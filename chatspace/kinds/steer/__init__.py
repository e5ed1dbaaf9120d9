"""The steer kind (`submit steer`)."""
