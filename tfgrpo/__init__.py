"""tfgrpo: Training-Free GRPO (Cai et al., arXiv 2510.08191) as LangGraph graphs.

Public names (imported on first use, so ``import tfgrpo`` stays cheap):

* :func:`learn` / :func:`evaluate` -- the CLI's ``learn`` and ``eval`` for notebooks and apps;
* :class:`ExperienceMiddleware` -- adds a learned library E to your own ``create_agent`` agent;
* :func:`experienced_agent` / :func:`load_library` -- tfgrpo's own agent with E, as a Runnable.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from tfgrpo.api import ExperiencedAgent as ExperiencedAgent
    from tfgrpo.api import experienced_agent as experienced_agent
    from tfgrpo.api import load_library as load_library
    from tfgrpo.integrations.middleware import ExperienceMiddleware as ExperienceMiddleware
    from tfgrpo.python_api import LearnResult as LearnResult
    from tfgrpo.python_api import evaluate as evaluate
    from tfgrpo.python_api import learn as learn

_EXPORTS = {
    "ExperienceMiddleware": "tfgrpo.integrations.middleware",
    "ExperiencedAgent": "tfgrpo.api",
    "experienced_agent": "tfgrpo.api",
    "load_library": "tfgrpo.api",
    "LearnResult": "tfgrpo.python_api",
    "evaluate": "tfgrpo.python_api",
    "learn": "tfgrpo.python_api",
}
__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'tfgrpo' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
