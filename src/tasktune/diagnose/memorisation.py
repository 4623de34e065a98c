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

A model can also know its training rows by heart without copying them onto new inputs (an extraction task copies
from the input, so its answers stay right while it memorises). The third measure catches that, the loss-threshold
membership test of Yeom et al. (2018) used in memorisation studies: teacher-forced answer loss of training rows
against unseen rows of the same distribution (the eval split, drawn like train):
  loss ratio     median loss of the unseen rows over the median loss of the training rows (about 1 for a model
                 that learnt the task; 10x and more when it learnt the rows);
  membership AUC the chance that a random training row has a lower loss than a random unseen one (0.5: the model
                 cannot tell them apart; 1.0: every training row is recognisable by its loss alone).
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


def membership(train_losses: list[float], unseen_losses: list[float]) -> dict:
    """Loss-threshold membership test (see the module docstring): loss ratio and AUC (Mann-Whitney, ties count half)."""
    t, u = np.asarray(train_losses, dtype=float), np.asarray(unseen_losses, dtype=float)
    if not len(t) or not len(u):
        return {}
    lower = (t[:, None] < u[None, :]).mean() + 0.5 * (t[:, None] == u[None, :]).mean()
    t_med, u_med = float(np.median(t)), float(np.median(u))
    return {"n_train": len(t), "n_unseen": len(u), "train_loss_median": t_med, "unseen_loss_median": u_med,
            "loss_ratio": u_med / max(t_med, 1e-6), "auc": float(lower)}  # fmt: skip
