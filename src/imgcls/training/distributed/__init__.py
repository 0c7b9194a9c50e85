"""Multi-host training on MXNet's parameter server (ps-lite): launch, coordination, teardown."""
