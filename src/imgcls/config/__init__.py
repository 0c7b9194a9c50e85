"""Configuration: the /opt/ml contract, the job's channels and hyperparameters, serving settings."""
