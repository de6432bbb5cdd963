"""User-facing errors: every problem a user can fix is raised as an :class:`FPNError`.

Command-line entry points wrap their ``main`` with :func:`fpnunet.cli_utils.run_cli`, which
prints these as one clean message (no traceback) and exits with a non-zero status.
"""
from __future__ import annotations


class FPNError(Exception):
    """An error whose message is meant for the user (names the file and what is wrong)."""


class DatasetError(FPNError):
    """A dataset failed verification; carries one message per problem."""

    def __init__(self, problems: list[str], header: str = "the dataset failed verification"):
        self.problems = list(problems)
        lines = [f"{header} ({len(self.problems)} problem{'s' if len(self.problems) != 1 else ''}):"]
        lines += [f"  - {p}" for p in self.problems]
        super().__init__("\n".join(lines))


class ShapeError(FPNError):
    """An input shape does not fit a network's divisibility or minimum-size rules."""
