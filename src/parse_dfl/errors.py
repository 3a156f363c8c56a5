"""One exception type for every mistake a user can make: the CLI prints one line, exits 2."""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user (config, data file, command line): reported as one line, exit code 2.

    `where` names the config field or file at fault, so the message points at what to fix.
    """

    def __init__(self, where: str, problem: str) -> None:
        self.where = " ".join(str(where).splitlines())
        self.problem = " ".join(str(problem).splitlines())
        where, problem = self.where, self.problem
        super().__init__(f"{where}: {problem}" if where else problem)

    def __reduce__(self) -> tuple[type[UserError], tuple[str, str]]:
        """Rebuilt from (where, problem) when it crosses a process boundary (a worker)."""
        return (UserError, (self.where, self.problem))
