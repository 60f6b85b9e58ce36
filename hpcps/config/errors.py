"""The one error type for bad user input: it names the file, the key and what is allowed."""


def one_line(text: str) -> str:
    """text with control characters escaped: an error is always one line, whatever a file's keys hold."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class ConfigError(Exception):
    """Bad user input. Command-line tools print it as one line and exit with status 2."""

    def __init__(self, source: str, key: str | None, message: str):
        self.source = str(source)
        self.key = key
        self.message = message
        where = f"{self.source}: key '{key}'" if key else self.source
        super().__init__(one_line(f"{where}: {message}"))
