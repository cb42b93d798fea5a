"""The models room: everything between a model spec string and a paid, booked response.

``spec`` builds LangChain chat models from a spec (``openai:...``, ``local:...``, a base URL);
``local_server`` starts the embedded llama.cpp server, with ``chat_format``, ``tool_calls`` and
``grammar`` for its chat template, tool-call parsing and answer grammar, and ``weights`` assembling and
hash-checking the GGUF file; ``cache`` is the run's result cache (with ``known_keys``, which store keys
can exist without a query), and ``ledger`` books every call, its tokens and cost, and enforces budgets.
Modules here may import ``tfgrpo.errors``, ``tfgrpo.state``, ``tfgrpo.context`` and ``tfgrpo.data``;
never runs/, tools/, evals/, integrations/, nodes/, graphs/ or the drivers at the package root.
"""
