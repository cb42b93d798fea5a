"""E as published in the store after every step: moved to :mod:`tfgrpo.state.published` (integrations
read it too, and may not import nodes); kept here so existing imports keep working."""

from tfgrpo.state.published import (
    LATEST,
    library_namespace,
    publish_library,
    published_library,
    published_steps,
    step_key,
)

__all__ = [
    "LATEST",
    "library_namespace",
    "publish_library",
    "published_library",
    "published_steps",
    "step_key",
]
