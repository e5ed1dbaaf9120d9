"""The steer job type (`submit steer`)."""
