"""The one error type for bad user input: it names the file, the key and what is allowed."""


class ConfigError(Exception):
    """Bad user input. Command-line tools print it as one line and exit with status 2."""

    def __init__(self, source: str, key: str | None, message: str):
        self.source = str(source)
        self.key = key
        self.message = message
        where = f"{self.source}: key '{key}'" if key else self.source
        super().__init__(f"{where}: {message}")
