"""The integrations room: tfgrpo inside the user's own LangChain agent.

``middleware`` is :class:`ExperienceMiddleware`, which adds a learned library E to any ``create_agent``
agent (and, during learning, reports the agent's calls to the run's ledger); ``user_agent`` loads the
user's agent factory (``--agent app.py:make_agent``) and runs it as the policy of a rollout. The nodes
import this room; it may import ``tfgrpo.errors``, ``tfgrpo.context``, ``tfgrpo.state`` and
``tfgrpo.models``, never nodes/, graphs/ or the drivers at the root. (tfgrpo's own agent with E as a
Runnable, :class:`ExperiencedAgent`, wraps the inference graph and so lives above it, in ``tfgrpo.api``.)
"""
