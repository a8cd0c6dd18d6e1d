"""Errors a user can cause. Each carries a message that names the file, line or setting and
the fix."""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input or settings; the CLI prints it and exits with `exit_code`."""

    exit_code = 2


class InputFileError(UserError):
    """A file with one or more bad lines; each problem reads `PATH:LINE: what is wrong`."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


class ConfigError(UserError):
    pass


class EndpointError(UserError):
    exit_code = 3
