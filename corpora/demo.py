"""The demo corpus: a generated IEMOCAP look-alike, read by the IEMOCAP reader unchanged."""
from __future__ import annotations

from pathlib import Path
from typing import List, Mapping, Optional, Sequence

from corpora.demo_synth import generate_demo_corpus
from corpora.iemocap import DEFAULT_LABELS, DEFAULT_MERGE, IemocapCorpus
from ser_plugins.corpus import Utterance


def has_sessions(root: str) -> bool:
    """True when ``root`` is a folder holding at least one ``SessionN`` folder."""
    path = Path(root)
    return path.is_dir() and any(p.is_dir() and p.name.startswith("Session") for p in path.iterdir())


class DemoCorpus(IemocapCorpus):
    """Synthetic IEMOCAP-layout corpus under ``root``, generated on first use when ``generate`` is True.

    ``seed`` and ``utterances_per_speaker`` only matter when the corpus is generated; an existing
    corpus under ``root`` is read as it is. ``labels``, ``merge`` and ``subset`` are those of
    ``IemocapCorpus`` (spelled out rather than ``**kwargs`` so the registry can check option names).
    """

    def __init__(self, root: str = "data/demo_iemocap", seed: int = 0, utterances_per_speaker: int = 40,
                 generate: bool = True, labels: Sequence[str] = DEFAULT_LABELS,
                 merge: Optional[Mapping[str, str]] = DEFAULT_MERGE, subset: str = "all") -> None:
        super().__init__(root, labels=labels, merge=merge, subset=subset)
        self.seed = seed
        self.utterances_per_speaker = utterances_per_speaker
        self.generate_if_missing = generate
        self._ensure()

    def _ensure(self) -> None:
        if self.generate_if_missing and not has_sessions(str(self.root)):
            generate_demo_corpus(str(self.root), seed=self.seed,
                                 utterances_per_speaker=self.utterances_per_speaker)

    def load(self) -> List[Utterance]:
        """Generate the corpus if it has gone missing (and ``generate`` is True), then read it."""
        self._ensure()
        return super().load()

    @classmethod
    def generate(cls, root: str, seed: int = 0, utterances_per_speaker: int = 40, overwrite: bool = False) -> dict:
        """Write the demo corpus to ``root`` (``ser demo-corpus DIR``); returns the generator's summary."""
        return generate_demo_corpus(root, seed=seed, utterances_per_speaker=utterances_per_speaker,
                                    overwrite=overwrite)
