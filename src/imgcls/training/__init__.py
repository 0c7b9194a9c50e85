"""Training: the job, its session on this host, the fit loop and what runs around it."""
