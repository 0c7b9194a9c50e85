"""Inference: the SageMaker-style HTTP model server and batch scoring of folders and S3 prefixes.

`predictor` turns image bytes into probabilities; `app` is the WSGI application; `server` runs
it under gunicorn; `batch` scores many images with the same predictor, without HTTP.
"""
