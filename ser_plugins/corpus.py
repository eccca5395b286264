"""The corpus contract: a list of labelled utterances plus the problems found while reading them."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional


@dataclass(frozen=True)
class Utterance:
    """One labelled utterance: where its audio is, its emotion label and who spoke it.

    ``start``/``end`` (seconds) select a segment of a longer file; ``fold``/``split`` carry a
    predefined fold or train/dev/test split when the corpus defines one.
    """

    id: str
    path: str
    label: str
    speaker: str
    session: str = ""
    start: Optional[float] = None
    end: Optional[float] = None
    fold: Optional[str] = None
    split: Optional[str] = None


@dataclass(frozen=True)
class CorpusProblem:
    """A problem found while reading a corpus: the file, the line (if any) and what is wrong."""

    path: str
    message: str
    line: Optional[int] = None
    fatal: bool = False

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line is not None else self.path
        return f"{where}: {self.message}"


class Corpus:
    """Base class of corpus plugins.

    A corpus plugin's constructor takes ``root`` (a folder or file) plus its own options and sets:
      * ``labels`` -- the class names, in the order used for logits and confusion matrices,
      * ``default_protocol`` -- the fold protocol used when a recipe names none,
    and implements ``load() -> list[Utterance]``, appending anything odd it meets to
    ``self.problems`` (fatal problems stop a run before training; the others are reported).
    """

    labels: List[str] = []
    default_protocol: str = "session"

    def __init__(self) -> None:
        self.problems: List[CorpusProblem] = []

    def load(self) -> List[Utterance]:  # pragma: no cover
        raise NotImplementedError

    def problem(self, path: str, message: str, line: Optional[int] = None, fatal: bool = False) -> None:
        """Record a problem met while reading the corpus."""
        self.problems.append(CorpusProblem(str(path), message, line, fatal))


@dataclass
class Fold:
    """One fold of a protocol: utterance ids of train, dev and test."""

    name: str
    train: List[str] = field(default_factory=list)
    dev: List[str] = field(default_factory=list)
    test: List[str] = field(default_factory=list)
