"""The base of every error whose message already tells the user what is wrong and what to run."""


class PipelineError(RuntimeError):
    """Shown to the user as it is, without a traceback: the message names the cause and the fix."""
