"""The errors every room may raise, defined below all of them (no room imports a later one).

``ConfigError`` is a bad run file or API argument: its message starts with the dotted field
(``model.hx: ...``) and says what to give instead; the CLI prints it and exits 2.
"""


class ConfigError(ValueError):
    """A bad run file; the message names the field."""
