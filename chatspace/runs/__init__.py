"""The run machinery: plan, tasks and their parts, completion records, reduce, status, resume,
cancel, logs and the executors (debug, local, slurm). It knows no kind: every call is
handed a `Kind` (see `chatspace.runs.kind`) and nothing here imports a kind's package."""
