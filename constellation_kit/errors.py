"""The one exception type that means "your configuration is wrong, here is how to fix it"."""


class ConfigError(ValueError):
    """A recipe or command-line value that cannot work, with the fix in its message.

    The console script prints these without a traceback: the message is the whole story.
    """
