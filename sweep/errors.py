"""The one error type for bad input: it names the setting, the value and what is allowed."""

EXIT_BAD_INPUT = 2


class ConfigError(ValueError):
    """A config value that cannot work; raised before any run is created."""

    def __init__(self, key: str, value, allowed: str):
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"invalid config: {key}={value!r}: {allowed}")


_work_started = False


def mark_work_started() -> None:
    """Called when a job (or a sweep's launch) begins: errors before this are bad input."""
    global _work_started
    _work_started = True


def work_started() -> bool:
    return _work_started
