"""The errors that end a command, each with its own exit code (documented in docs/architecture.md).

A stage raises one of these with a one-line message; the CLI prints that line and exits with `exit_code`,
never a traceback. Everything else (a bug) keeps its traceback and exits 1.

| code | class          | meaning                                                                          |
|------|----------------|----------------------------------------------------------------------------------|
| 2    | InputError     | bad user input: a config key, a data file's row or field, a missing API key      |
| 3    | EndpointError  | the environment: endpoint unreachable, model not served, auth refused, breaker   |
| 4    | ResultError    | the stage ran but its result is unusable: empty output, mostly request failures  |
"""

from __future__ import annotations


class AutoevolError(Exception):
    """Base of the errors that end a command with one line and a distinct exit code."""

    exit_code = 1


class InputError(AutoevolError, ValueError):
    """Bad user input (config, data file, row): the message is one line naming the file, row or key path.

    Raised before anything is written: no run directory is left behind for it."""

    exit_code = 2


class ConfigError(InputError):
    """A config could not be loaded; the message is one line that names the file and the key path."""


class EndpointError(AutoevolError):
    """An LLM endpoint cannot serve the run (unreachable, wrong model name, 401/403, circuit breaker open).

    The message is one line naming the role, the URL, the model and the server's answer."""

    exit_code = 3


class ResultError(AutoevolError):
    """A stage finished but what it produced is not a result: an empty dataset, rejects that are mostly request
    errors, an optimisation whose every candidate failed for request errors. The message gives the breakdown."""

    exit_code = 4
