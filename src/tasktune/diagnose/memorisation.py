"""Does the tuned model copy training answers onto new inputs? Overlap of generated text with the training answers.

Two measures, each taken for the model's outputs and, as the control, for the references of the same held-out
inputs (a task whose correct answers legitimately repeat, such as a label set, copies "training answers" all the
time without memorising anything):
  copy rate      share of texts equal to a training answer (after normalising case, whitespace and JSON layout) or
                 nearly equal: Jaccard similarity >= 0.8 of word 5-shingles with one training answer, estimated with
                 MinHash and confirmed on the signatures (the same machinery as `tasktune check`'s near duplicates,
                 dedup.py);
  n-gram overlap mean share of a text's word 5-grams that occur somewhere in the training answers: text spliced
                 together from several memorised answers scores high here without equalling any one of them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from tasktune.dedup import MinHasher, cross_pairs, digest, normalise, shingles

NEAR_THRESHOLD = 0.8
SHINGLE_WORDS = 5


def canonical(text: str) -> str:
    """Normalised text; a JSON answer in one layout (sorted keys, compact), so formatting differences do not count."""
    try:
        return json.dumps(json.loads(text), sort_keys=True, separators=(",", ":"), ensure_ascii=False).casefold()
    except (json.JSONDecodeError, TypeError):
        return normalise(text)


def _gram_hashes(text: str) -> np.ndarray:
    return np.fromiter((digest(g.decode("utf-8", "surrogatepass")) for g in shingles(text, SHINGLE_WORDS)), np.uint64)


@dataclass
class Match:
    copied: bool  # equal or near-equal to a training answer
    train_index: int | None  # which training answer (first found)
    similarity: float  # 1.0 exact, else the MinHash estimate
    ngram_overlap: float  # share of the text's 5-grams found in the training answers


class TrainingAnswers:
    """An index of the training answers: exact digests, sorted 5-gram hashes and MinHash signatures."""

    def __init__(self, answers: list[str]):
        self.answers = answers
        self.exact: dict[int, int] = {}
        for i, a in enumerate(answers):
            self.exact.setdefault(digest(canonical(a)), i)
        grams = [_gram_hashes(a) for a in answers]
        self.grams = np.unique(np.concatenate(grams)) if grams else np.empty(0, np.uint64)
        self.hasher = MinHasher(threshold=NEAR_THRESHOLD, shingle_words=SHINGLE_WORDS)
        self.sigs, self.keys = self.hasher.signatures(answers)

    def ngram_overlap(self, text: str) -> float:
        g = np.unique(_gram_hashes(text))
        if not len(g) or not len(self.grams):
            return 0.0
        pos = np.minimum(np.searchsorted(self.grams, g), len(self.grams) - 1)
        return float((self.grams[pos] == g).mean())

    def match(self, texts: list[str]) -> list[Match]:
        sigs, keys = self.hasher.signatures(texts)
        near: dict[int, tuple[int, float]] = {}
        for a, b, sim in zip(*cross_pairs(self.sigs, self.keys, sigs, keys, NEAR_THRESHOLD), strict=True):
            if int(b) not in near or sim > near[int(b)][1]:
                near[int(b)] = (int(a), float(sim))
        out = []
        for i, t in enumerate(texts):
            exact = self.exact.get(digest(canonical(t))) if t.strip() else None
            if exact is not None:
                out.append(Match(True, exact, 1.0, self.ngram_overlap(t)))
            elif i in near and t.strip():
                out.append(Match(True, near[i][0], near[i][1], self.ngram_overlap(t)))
            else:
                out.append(Match(False, None, 0.0, self.ngram_overlap(t)))
        return out
