"""Exact and near-duplicate removal, streaming, first occurrence kept.

Rows are visited in seed order; a row whose text (normalised: lower-case, words only) equals an earlier
kept row's is an exact duplicate; one whose MinHash signature says its word-shingle Jaccard similarity to an
earlier kept row is at least `near_threshold` is a near duplicate. MinHash (Broder 1997) with `num_perm`
permutations, banded for locality-sensitive lookup (b bands of r rows; a candidate pair is then checked on
its full signature, so the threshold is what decides, not the banding). No text is kept; memory per kept row
is ~100 bytes for exact duplicates and ~3.3 KB for near duplicates with the defaults (measured: signature
``num_perm * 4`` bytes plus one dict entry per band), i.e. ~3.3 GB per million rows: `bands: 16` halves
the index (candidates at Jaccard 0.8 are then found 95% of the time instead of ~100%), `near: false` drops it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import xxhash
from pydantic import Field, model_validator

from autoevol_train.config import StrictModel
from autoevol_train.data.decontam import word_tokens

if TYPE_CHECKING:
    import numpy as np

__all__ = ["DedupConfig", "Deduplicator"]

_MERSENNE = (1 << 61) - 1
_MAX32 = 0xFFFFFFFF


class DedupConfig(StrictModel):
    exact: bool = Field(True, description="drop rows whose normalised text equals an earlier row's")
    near: bool = Field(True, description="drop rows whose estimated Jaccard similarity to an earlier row "
                                         "is at least near_threshold (MinHash over word shingles)")
    near_threshold: float = Field(0.8, gt=0.0, le=1.0)
    shingle_words: int = Field(3, ge=1, description="words per shingle (instructions are short: 3)")
    num_perm: int = Field(128, ge=8, description="MinHash permutations")
    bands: int = Field(32, ge=1, description="LSH bands (num_perm must be divisible by it)")
    fields: Literal["instruction", "all"] = Field(
        "instruction", description="text compared: user turns only, or user and assistant turns")
    seed: int = 1

    @model_validator(mode="after")
    def _bands_divide_perms(self) -> "DedupConfig":
        if self.num_perm % self.bands:
            raise ValueError(f"num_perm {self.num_perm} is not divisible by bands {self.bands}")
        return self


class Deduplicator:
    """`check(row_id, text, group)` → None (kept, remembered) or ``"duplicate_of:<id>"`` /
    ``"near_duplicate_of:<id>"``.

    Rows of the same `group` (the rounds of one seed, kept together by round mixing) are never near
    duplicates of each other: round 2 is round 1 plus a few words by design. Exact copies still are.
    """

    def __init__(self, config: DedupConfig):
        import numpy as np  # here, not at the top: the stage configs import this module before any request

        self.config = config
        self._exact: dict[int, str] = {}
        self._buckets: list[dict[bytes, int]] = [{} for _ in range(config.bands)]
        self._signatures: list[np.ndarray] = []
        self._ids: list[str] = []
        self._groups: list[str] = []
        rng = np.random.default_rng(config.seed)
        self._a = rng.integers(1, _MERSENNE, size=config.num_perm, dtype=np.uint64)
        self._b = rng.integers(0, _MERSENNE, size=config.num_perm, dtype=np.uint64)
        self._mersenne, self._max32 = np.uint64(_MERSENNE), np.uint64(_MAX32)

    def signature(self, words: list[str]) -> np.ndarray:
        import numpy as np

        n = self.config.shingle_words
        shingles = {" ".join(words[i:i + n]) for i in range(max(len(words) - n + 1, 1))}
        hashes = np.fromiter((xxhash.xxh32_intdigest(s.encode()) for s in shingles), dtype=np.uint64,
                             count=len(shingles))
        with np.errstate(over="ignore"):  # the universal hash (a*x + b) mod p relies on uint64 wrap-around
            permuted = ((hashes[:, None] * self._a + self._b) % self._mersenne) & self._max32
        return permuted.min(axis=0).astype(np.uint32)

    def check(self, row_id: str, text: str, group: str = "") -> str | None:
        words = word_tokens(text)
        if self.config.exact:
            key = xxhash.xxh64_intdigest(" ".join(words).encode())
            if key in self._exact:
                return f"duplicate_of:{self._exact[key]}"
        signature = None
        if self.config.near:
            signature = self.signature(words)
            bands = signature.reshape(self.config.bands, -1)
            seen: set[int] = set()
            for band, bucket in zip(bands, self._buckets):
                other = bucket.get(band.tobytes())
                if other is None or other in seen or (group and self._groups[other] == group):
                    continue
                seen.add(other)
                if (self._signatures[other] == signature).mean() >= self.config.near_threshold:
                    return f"near_duplicate_of:{self._ids[other]}"
        if self.config.exact:
            self._exact[key] = row_id
        if signature is not None:
            position = len(self._ids)
            self._signatures.append(signature)
            self._ids.append(row_id)
            self._groups.append(group)
            for band, bucket in zip(signature.reshape(self.config.bands, -1), self._buckets):
                bucket.setdefault(band.tobytes(), position)
        return None
