"""User-facing errors: one line, naming the file, row or field at fault."""


class TfgrpoError(ValueError):
    """An error the CLI prints as a single line (no traceback).

    A ``ValueError`` because the LangGraph API server (``langgraph dev``, Studio) passes the message of a
    ``ValueError`` to the client and replaces any other exception's with "An internal error occurred"
    (``langgraph_api.serde``): this way a Studio user reads the same line as a CLI user.
    """


class DataError(TfgrpoError):
    """A dataset file or spec is unusable (missing field, empty file, duplicate id, ...)."""


class ConfigError(TfgrpoError):
    """A setting is missing or invalid (model spec, reward name, run directory, ...)."""


class ProviderError(TfgrpoError):
    """A model provider's error that survived the retries (unreachable server, refused credentials, unknown
    model, ...), as the sentence a user can act on; ``cause`` is the provider's exception."""

    def __init__(self, sentence: str, cause: BaseException | None = None) -> None:
        super().__init__(sentence)
        self.cause = cause


class RunFailed(TfgrpoError):
    """A run ended without learning anything (every LLM call failed, or no rollout could be scored), or an
    evaluation without a usable run; the message names the first error, and what there is was saved."""


class RunInterrupted(KeyboardInterrupt):
    """A run drained after Ctrl-C: calls in flight finished and were kept; the message says how to resume.
    A ``KeyboardInterrupt``, as the Ctrl-C that caused it."""


class StopRequested(TfgrpoError):
    """A map branch not yet started refuses to start because the run was asked to drain (Ctrl-C).

    A drain stops at the next superstep, but a map (rollouts, summaries, eval runs) is one superstep:
    without this, Ctrl-C would wait for every remaining branch. Finished branches are kept; the same
    command resumes.
    """


class TfgrpoWarning(UserWarning):
    """Something a user should know that does not stop the work: E not published yet (answered without
    it), E learned with another model than the one using it."""
