"""The inference graph: a ReAct agent (``langchain.agents.create_agent``) with E in its system prompt.

The same agent is the policy of learning rollouts (:mod:`tfgrpo.nodes.policy`). Settings come from the
run context (:class:`tfgrpo.context.Context`): ``model``, ``domain`` (direct | math | search),
``library`` (a library.json or run directory) or ``library_namespace`` (a store namespace), and the
caps on model and tool calls. Without tools it is a single completion (the paper's "direct prompting").
The output state carries the final ``answer`` next to the whole message trajectory.
"""

from __future__ import annotations

from tfgrpo.nodes.policy import build_policy_agent

build_inference_graph = build_policy_agent

# For langgraph.json / Studio: no checkpointer compiled in (the server brings its own).
graph = build_inference_graph()
