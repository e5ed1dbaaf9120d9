"""The run machinery: plan, tasks and their parts, completion records, reduce, status, resume,
cancel, logs and the executors (debug, local, slurm). It knows no job type: every call is
handed a `JobType` (see `chatspace.runs.job`) and nothing here imports a job package."""
