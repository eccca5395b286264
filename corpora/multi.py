"""Several corpora read as one: multi-corpus training and cross-corpus evaluation.

``corpus: {name: multi, corpora: {iemocap: {name: iemocap, root: ...}, ravdess: {name: ravdess,
root: ...}}, labels: [neu, hap, ang, sad], maps: {ravdess: {cal: neu}}}`` reads every listed corpus
through the plugin registry (each one exactly as its own recipe section would) and returns the
union. Every utterance keeps where it comes from: its id, speaker and session are prefixed with
the corpus's key (``ravdess/Actor_01``), and ``Utterance.corpus`` holds the key, so speaker-disjoint
dev sets, speaker normalisation and the ``cross_corpus`` protocol (``protocol: {name: cross_corpus,
train: [iemocap], test: [ravdess]}``) work on the union, and a run reports its results per corpus.

Labels: ``labels`` is the shared label set. ``maps`` maps, per corpus, its own class names onto it
(``{ravdess: {cal: neu}}``); a class that is in ``labels`` maps onto itself. A class neither mapped
nor shared cannot be compared across corpora: its utterances are dropped and counted, one
``dropped_label`` problem per corpus and class (``ravdess:sur``), or kept as ``NO_LABEL`` when they
carry attributes (a regression task can use them). Attributes (arousal, valence, ...) pass through;
a corpus's scale is kept per corpus (scales that differ are reported as a problem: CCC across
corpora on different scales is not comparable).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from ser_plugins.plugins.contracts import DROPPED_LABEL, NO_LABEL, Corpus, Utterance


class MultiCorpus(Corpus):
    """The union of several corpus plugins over one shared label set (see the module docstring)."""

    default_protocol = "speaker"

    def __init__(self, corpora: Mapping[str, Any], labels: Sequence[str],
                 maps: Optional[Mapping[str, Mapping[str, str]]] = None, keep_unlabelled: bool = False) -> None:
        super().__init__()
        if not isinstance(corpora, Mapping) or len(corpora) < 1:
            raise ValueError("corpora must map a key to each corpus section: e.g. {iemocap: {name: iemocap, root: ..}}")
        if isinstance(labels, str) or not labels:
            raise ValueError("labels must list the shared classes, e.g. [neu, hap, ang, sad]")
        self.labels: List[str] = [str(lab) for lab in labels]
        self.maps: Dict[str, Dict[str, str]] = {str(k): {str(a): str(b) for a, b in dict(v).items()}
                                                for k, v in dict(maps or {}).items()}
        unknown = sorted(set(self.maps) - {str(k) for k in corpora})
        if unknown:
            raise ValueError(f"maps names corpus {unknown[0]!r}, which corpora does not list")
        for key, mapping in self.maps.items():
            bad = sorted({v for v in mapping.values() if v not in self.labels})
            if bad:
                raise ValueError(f"maps.{key} maps onto {bad}, outside labels {self.labels}")
        self.keep_unlabelled = bool(keep_unlabelled)
        self.specs: Dict[str, Tuple[str, Dict[str, Any]]] = {}
        for key, spec in corpora.items():
            if "/" in str(key) or not str(key):
                raise ValueError(f"corpus key {key!r}: a non-empty name without '/'")
            if isinstance(spec, str):
                spec = {"name": spec}
            if not isinstance(spec, Mapping) or "name" not in spec:
                raise ValueError(f"corpora.{key}: a corpus section with a name, e.g. {{name: iemocap, root: ...}}")
            options = {k: v for k, v in spec.items() if k != "name"}
            if spec["name"] == "multi":
                raise ValueError(f"corpora.{key}: a multi corpus cannot contain another")
            self.specs[str(key)] = (str(spec["name"]), options)
        self.parts: Dict[str, Corpus] = {}
        attributes: List[str] = []
        scales: Dict[str, Tuple[float, float]] = {}
        self._scale_clash: List[str] = []
        from ser_plugins.plugins import registry

        for key, (name, options) in self.specs.items():
            part = registry.create_corpus(name, **options)
            self.parts[key] = part
            for attr in getattr(part, "attributes", ()):
                if attr not in attributes:
                    attributes.append(attr)
            for attr, scale in dict(getattr(part, "attribute_scales", {})).items():
                scale = (float(scale[0]), float(scale[1]))
                if attr in scales and scales[attr] != scale:
                    self._scale_clash.append(f"{attr}: {scales[attr]} and {scale} ({key})")
                    scales[attr] = (min(scales[attr][0], scale[0]), max(scales[attr][1], scale[1]))
                else:
                    scales.setdefault(attr, scale)
        self.attributes = tuple(attributes)
        self.attribute_scales = scales
        self.dropped: Dict[str, int] = {}
        self.counts: Dict[str, Dict[str, int]] = {}

    def _shared(self, key: str, label: str) -> Optional[str]:
        if label == NO_LABEL:
            return NO_LABEL
        mapped = self.maps.get(key, {}).get(label)
        if mapped is not None:
            return mapped
        return label if label in self.labels else None

    def load(self) -> List[Utterance]:
        """Every corpus's utterances, prefixed with its key and mapped onto the shared labels."""
        self.problems = []
        self.dropped = {}
        out: List[Utterance] = []
        for clash in self._scale_clash:
            self.problem("multi", f"attribute scales differ between corpora ({clash}): their CCCs are not comparable")
        for key, part in self.parts.items():
            utterances = part.load()
            for p in part.problems:
                self.problems.append(replace(p, path=f"{key}: {p.path}", key=f"{key}:{p.key}" if p.key else p.key))
            counts: Dict[str, int] = {}
            for u in utterances:
                shared = self._shared(key, u.label)
                if shared is None:
                    if self.keep_unlabelled and u.attributes:
                        shared = NO_LABEL
                    else:
                        tag = f"{key}:{u.label}"
                        self.dropped[tag] = self.dropped.get(tag, 0) + 1
                        continue
                counts[shared or "(no class)"] = counts.get(shared or "(no class)", 0) + 1
                out.append(replace(
                    u,
                    id=f"{key}/{u.id}",
                    label=shared,
                    speaker=f"{key}/{u.speaker}",
                    session=f"{key}/{u.session or u.speaker}",
                    corpus=key,
                    fold=f"{key}/{u.fold}" if u.fold else u.fold,
                ))
            self.counts[key] = counts
        for tag, n in sorted(self.dropped.items()):
            self.problem("multi", f"{n} utterance(s) of class {tag} dropped: not mapped onto the shared labels "
                         f"{self.labels} (maps)", kind=DROPPED_LABEL, key=tag, count=n)
        return out
