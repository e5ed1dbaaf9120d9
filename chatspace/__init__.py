"""chatspace: SLURM/HPC batch jobs for embedding datasets and steering sweeps."""

__version__ = "0.1.0"
