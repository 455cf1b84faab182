"""Errors a user can cause; each carries a one-line message meant to be shown as is."""


class LocalLLMError(Exception):
    """Base of every error localllm reports to a user without a traceback."""


class ModelNotFoundError(LocalLLMError):
    pass


class InvalidModelNameError(ModelNotFoundError):
    """A name that cannot name a model at all (spaces, '..', not owner/name): no model by it could be found."""


class UnsupportedModelError(LocalLLMError):
    pass


class CorruptModelError(LocalLLMError):
    pass


class PromptTooLongError(LocalLLMError):
    pass


class PullError(LocalLLMError):
    """A download that cannot go on: too little disk space, the Hub or PyPI unreachable, a download cut short."""


def one_line(error: BaseException) -> str:
    """The error's message on one line (its line breaks and runs of spaces collapsed), or its type's name when it
    has no message: what a user is shown after 'Error: '."""
    return " ".join(str(error).split()) or type(error).__name__


def first_line(error: BaseException, limit: int = 300) -> str:
    """The first non-blank line of the error's message, cut at `limit` characters, or its type's name: for the errors
    of libraries (tokenizers, safetensors, the Hub client) whose later lines are tracebacks or dumps."""
    line = next((line.strip() for line in str(error).splitlines() if line.strip()), "")
    return line[:limit] or type(error).__name__
