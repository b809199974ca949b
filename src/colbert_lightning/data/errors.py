"""Errors for malformed input, and the tally kept when the user opts to skip bad lines."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

OnBadLine = Literal["error", "skip"]


class DataFormatError(ValueError):
    """A malformed line in an input file: names the file, the 1-based line and the problem.

    Also bytes that cannot be decompressed: the line is the first one that could not be read.
    """

    def __init__(self, path: str, line: int, problem: str) -> None:
        super().__init__(f"{path}:{line}: {problem}")
        self.path = str(path)
        self.line = line
        self.problem = problem

    def __reduce__(self):  # keep the three fields when raised inside a DataLoader worker
        return (type(self), (self.path, self.line, self.problem))


def check_on_bad_line(policy: object) -> None:
    """The one check of ``data.on_bad_line``, by ``ColBERTDataModule`` and ``BadLines``.

    Raises:
        ValueError: ``policy`` is neither ``error`` nor ``skip``.
    """
    if policy not in ("error", "skip"):
        raise ValueError(f"data.on_bad_line must be 'error' or 'skip', got {policy!r}")


@dataclass
class BadLines:
    """Counts what was skipped, by file and problem, when ``on_bad_line='skip'``.

    Attributes:
        policy: ``error`` raises the first ``DataFormatError``; ``skip`` counts it and goes on.
        counts: skipped lines per ``(file, problem)``.
    """

    policy: OnBadLine = "error"
    counts: Counter = field(default_factory=Counter)

    def __post_init__(self) -> None:
        check_on_bad_line(self.policy)

    def handle(self, error: DataFormatError) -> None:
        """Raise ``error`` or count it, by policy."""
        if self.policy == "error":
            raise error
        self.counts[(error.path, error.problem)] += 1

    @property
    def total(self) -> int:
        """Number of lines skipped so far."""
        return sum(self.counts.values())
