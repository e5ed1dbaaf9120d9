"""`chatspace chat`: the interactive mode of the persona experiments, with live steering."""
