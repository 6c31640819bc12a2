"""The two errors r1ray turns into one line for the user (exit code 2); every layer may raise them."""


class ConfigError(ValueError):
    """A configuration problem, already phrased for the person who wrote the config."""


class DataError(ValueError):
    """Bad input found when the run starts (dataset rows, model folder), phrased for the user."""
