"""Exact and near-duplicate detection in bounded memory: digests and MinHash signatures, never the texts.

Exact: rows compare by 64-bit digests of their normalised text (case-folded, whitespace collapsed).
Near: the Jaccard similarity of two rows' word k-shingle sets (Broder 1997, "On the resemblance and containment of
documents"), estimated by MinHash signatures (`datasketch`) and searched by banding them (locality-sensitive hashing,
Leskovec, Rajaraman & Ullman, "Mining of Massive Datasets", ch. 3.4; the bands x rows split is datasketch's choice for
the threshold). Rows that share a band key are candidates; a candidate is confirmed only when the two signatures
agree on at least `threshold` of their positions, the MinHash estimate of the Jaccard similarity.

The band keys are matched by sorting numpy arrays once a split is read, rather than in datasketch's `MinHashLSH`:
that one holds a Python set per band bucket, 2.4 kB per row (240 MB for 100,000 rows, five times the texts). Here a
row costs 40 bytes of band keys and 256 bytes of signature: its low 16 bits per position (b-bit minwise hashing,
Li & König 2010; agreement is overestimated by at most 2^-16).
"""

from __future__ import annotations

import hashlib
import re
import zlib

import numpy as np

_WORD = re.compile(r"\w+")
_SPACE = re.compile(r"\s+")
_PAIR_CHUNK = 1 << 16  # candidate pairs compared at once (bounds the temporary arrays)


def normalise(text: str) -> str:
    return _SPACE.sub(" ", text.strip()).casefold()


def digest(text: str) -> int:
    """A 64-bit digest: 100,000 rows collide with probability about 3e-10 (birthday bound n^2 / 2^65)."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")


def shingles(text: str, k: int) -> set[bytes]:
    """Word k-shingles of the case-folded text; a text of k words or fewer is one shingle (so it matches exactly)."""
    words = _WORD.findall(text.casefold())
    if len(words) <= k:
        return {" ".join(words).encode("utf-8", "surrogatepass")}
    return {" ".join(words[i : i + k]).encode("utf-8", "surrogatepass") for i in range(len(words) - k + 1)}


class MinHasher:
    """Signatures and band keys for batches of texts; `threshold` is the Jaccard similarity that counts as near."""

    def __init__(self, threshold: float = 0.9, num_perm: int = 128, shingle_words: int = 5):
        from datasketch import MinHashLSH

        self.threshold = threshold
        self.num_perm = num_perm
        self.k = shingle_words
        probe = MinHashLSH(threshold=threshold, num_perm=num_perm)  # only for its choice of bands x rows
        self.bands, self.rows = probe.b, probe.r
        self._mult = np.random.default_rng(0).integers(1, 2**63, size=self.rows, dtype=np.uint64) | np.uint64(1)

    def signatures(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(signatures uint16 [n, num_perm], band keys uint64 [n, bands]) for a batch of texts."""
        from datasketch import MinHash

        if not texts:
            return np.empty((0, self.num_perm), np.uint16), np.empty((0, self.bands), np.uint64)
        # crc32 only names each shingle with a 32-bit number (the min-wise permutations are datasketch's random
        # affine maps); it is several times faster than the default sha1, the largest cost of hashing many rows.
        hashes = MinHash.bulk((shingles(t, self.k) for t in texts), num_perm=self.num_perm, hashfunc=zlib.crc32)
        full = np.stack([m.hashvalues for m in hashes]).astype(np.uint64)
        bands = full[:, : self.bands * self.rows].reshape(len(full), self.bands, self.rows)
        keys = (bands * self._mult).sum(axis=2, dtype=np.uint64)  # a random linear hash of each band (mod 2^64)
        return (full & np.uint64(0xFFFF)).astype(np.uint16), keys


def first_with_same_key(keys: np.ndarray) -> np.ndarray:
    """For each position, the first position holding the same key (itself when it is the first)."""
    n = len(keys)
    if n == 0:
        return np.empty(0, dtype=np.int64)
    order = np.argsort(keys, kind="stable")
    ks = keys[order]
    starts = np.r_[True, ks[1:] != ks[:-1]]
    first_in_sorted = np.maximum.accumulate(np.where(starts, np.arange(n), 0))
    out = np.empty(n, dtype=np.int64)
    out[order] = order[first_in_sorted]
    return out


def _confirm(sig_a, sig_b, ia, ib, threshold) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not len(ia):
        return ia, ib, np.empty(0)
    pairs = np.unique(np.stack([ia, ib], axis=1), axis=0)
    sims = np.concatenate([(sig_a[pairs[s : s + _PAIR_CHUNK, 0]] == sig_b[pairs[s : s + _PAIR_CHUNK, 1]]).mean(axis=1)
                           for s in range(0, len(pairs), _PAIR_CHUNK)])  # fmt: skip
    keep = sims >= threshold
    return pairs[keep, 0], pairs[keep, 1], sims[keep]


def near_pairs(sigs: np.ndarray, keys: np.ndarray, threshold: float, partners: int = 64):
    """Confirmed pairs (earlier, later, similarity) among rows given in file order.

    Within a band bucket each row is compared with the `partners` rows before it, so a bucket of m rows costs
    O(m * partners), not O(m^2); in a large cluster of near-copies each copy still meets its neighbours.
    """
    n = len(sigs)
    earlier, later = [], []
    for b in range(keys.shape[1]):
        order = np.argsort(keys[:, b], kind="stable")  # stable: earlier rows first within a bucket
        ks = keys[order, b]
        starts = np.flatnonzero(np.r_[True, ks[1:] != ks[:-1]])
        offset = np.arange(n) - np.repeat(starts, np.diff(np.r_[starts, n]))
        for d in range(1, partners + 1):
            sel = np.flatnonzero(offset >= d)
            if not len(sel):
                break
            earlier.append(order[sel - d])
            later.append(order[sel])
    if not earlier:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0)
    return _confirm(sigs, sigs, np.concatenate(earlier), np.concatenate(later), threshold)


def cross_pairs(sigs_a, keys_a, sigs_b, keys_b, threshold: float, partners: int = 64):
    """Confirmed pairs (row of a, row of b, similarity): rows of b nearly identical to a row of a."""
    found_a, found_b = [], []
    for b in range(keys_a.shape[1]):
        order = np.argsort(keys_a[:, b], kind="stable")
        ks = keys_a[order, b]
        lo = np.searchsorted(ks, keys_b[:, b], "left")
        hi = np.searchsorted(ks, keys_b[:, b], "right")
        for d in range(partners):
            sel = np.flatnonzero(lo + d < hi)
            if not len(sel):
                break
            found_a.append(order[lo[sel] + d])
            found_b.append(sel)
    if not found_a:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0)
    return _confirm(sigs_a, sigs_b, np.concatenate(found_a), np.concatenate(found_b), threshold)
