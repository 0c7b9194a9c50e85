"""imgcls: an open re-implementation of SageMaker's built-in Image Classification algorithm."""

__version__ = "0.1.0"
