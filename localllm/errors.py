"""Errors a user can cause; each carries a one-line message meant to be shown as is."""


class LocalLLMError(Exception):
    """Base of every error localllm reports to a user without a traceback."""


class ModelNotFoundError(LocalLLMError):
    pass


class UnsupportedModelError(LocalLLMError):
    pass


class CorruptModelError(LocalLLMError):
    pass


class PromptTooLongError(LocalLLMError):
    pass
