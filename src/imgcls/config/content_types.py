"""The content types of the contract: of data channels, of the model channel, of requests."""

from __future__ import annotations

RECORDIO = "application/x-recordio"
IMAGE_CONTENT_TYPES = ("application/x-image", "image/jpeg", "image/png")
MODEL = "application/x-sagemaker-model"


def media_type(content_type: str | None) -> str | None:
    """The content type without parameters such as `; label-format=class-id`, lower case."""
    if content_type is None:
        return None
    return content_type.split(";", 1)[0].strip().lower()


def is_image(content_type: str | None) -> bool:
    """Whether `content_type` (parameters allowed) names image bytes rather than RecordIO."""
    return media_type(content_type) in IMAGE_CONTENT_TYPES
