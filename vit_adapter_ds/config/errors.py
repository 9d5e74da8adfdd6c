class ConfigError(ValueError):
    """A recipe, DeepSpeed config or command-line value is invalid; the message says what and how to fix it."""
