"""A running homomorphic sum of integer contributions, added as they arrive (server side).

:func:`secagg.ckks.add_ciphertexts` adds complete batches; a server that receives
contributions one by one would have to keep them all (16 MB each for 10^6 values) until the
deadline. :class:`CkksSum` instead holds one decoded TenSEAL vector per chunk position and adds
each contribution on receipt, so memory stays at one (full-size) vector and serialization
happens once, at the end.

A sum may cover a slice of the chunk positions (``positions=range(a, b)``): a server with
several worker processes (TenSEAL holds the GIL, so threads do not help) gives each worker a
:class:`CkksSum` over its slice and the slice of every upload; the concatenated results are the
full sum.

The server's adding is injectable: :class:`Summer` is what a server needs from a running sum
(``add``, ``result``, ``terms``) and :class:`SummerFactory` makes one per round (the class
:class:`CkksSum` itself is the default, in-process factory). A runtime can provide one that
sums in worker processes, each holding a :class:`CkksSum` over its slice and adding in two
phases (:meth:`CkksSum.prepare` checks and loads a contribution, :meth:`CkksSum.commit` adds
it), so that a contribution one worker refuses is added by none.

Every chunk is checked against the header the expected layout, context and vector length
dictate *before* SEAL sees it (fingerprint, position, chunk count, slot count, layout, terms = 1,
SEAL header and exact size), and a contribution is added only once all its chunks have loaded:
a malformed contribution raises :class:`CkksError` and leaves the sum untouched. Content cannot
be checked without the key (CKKS is malleable): integrity and origin come from the protocol.
Needs only the keyless :class:`CkksPublicContext`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any, Protocol

from secagg._check import check_int
from secagg.ckks import _int_header, _load_vector, _max_seal_bytes
from secagg.ckks_context import CkksPublicContext
from secagg.ckks_layout import SlotLayout
from secagg.ckks_wire import ChunkHeader, check_seal_header, vector_proto_ciphertext
from secagg.errors import CkksError

__all__ = ["CkksSum", "LoadedContribution", "Summer", "SummerFactory"]


class Summer(Protocol):
    """A running sum of one round's contributions, as a CKKS server uses it.

    ``add`` raises :class:`CkksError` (the contributor's fault: the sum is unchanged) or
    ``TypeError``; a failure of the summer itself (a lost worker process) must not surface as
    :class:`CkksError`: an implementation raises its own error from ``result`` instead.
    """

    @property
    def terms(self) -> int:
        """Contributions added so far."""

    def add(self, cts: Sequence[bytes]) -> None:
        """Check one contribution completely, then add it."""

    def result(self) -> list[bytes]:
        """The encrypted sum, one chunk per position."""


class SummerFactory(Protocol):
    """Makes the :class:`Summer` of one round (:class:`CkksSum` is one)."""

    def __call__(self, pub: CkksPublicContext, layout: SlotLayout, *, count: int) -> Summer:
        """A new, empty sum of ``count`` values under ``layout`` and ``pub``."""


class LoadedContribution:
    """A contribution :meth:`CkksSum.prepare` checked and loaded, not yet added."""

    __slots__ = ("_owner", "_vectors")

    def __init__(self, owner: CkksSum, vectors: list[Any]) -> None:
        self._owner: CkksSum | None = owner
        self._vectors = vectors


class CkksSum:
    """Sum of ``encrypt_ints`` contributions of ``count`` values under ``layout`` and ``pub``,
    over the chunk ``positions`` (default: all of them).

    Raises (constructor):
        TypeError: wrong argument types.
        ValueError: ``count`` < 1, ``layout`` for another preset than ``pub``, or
            ``positions`` not a non-empty step-1 range inside the vector's chunks.
    """

    __slots__ = ("_acc", "_expected", "_pub", "_terms")

    def __init__(
        self, pub: CkksPublicContext, layout: SlotLayout, *, count: int,
        positions: range | None = None,
    ) -> None:
        if not isinstance(pub, CkksPublicContext):
            raise TypeError(f"pub must be CkksPublicContext, got {type(pub).__name__}")
        if not isinstance(layout, SlotLayout):
            raise TypeError(f"layout must be SlotLayout, got {type(layout).__name__}")
        if layout.preset != pub.preset:
            raise ValueError(f"layout is for {layout.preset.name}, context is {pub.preset.name}")
        check_int("count", count, lo=1)
        slots, per = layout.slots_for(count), layout.slots_per_ciphertext
        total = -(-slots // per)
        if positions is None:
            positions = range(total)
        if not isinstance(positions, range):
            raise TypeError("positions must be a range")
        if not (len(positions) and positions.step == 1 and 0 <= positions.start
                and positions.stop <= total):
            raise ValueError(f"positions must be a non-empty slice of range({total})")
        self._pub = pub
        self._expected = [
            _int_header(layout, pub.fingerprint, i, total, min(per, slots - i * per), 1)
            for i in positions
        ]
        self._acc: list[Any] = []
        self._terms = 0

    @property
    def chunks(self) -> int:
        """Chunks every contribution must have (those at ``positions``)."""
        return len(self._expected)

    @property
    def terms(self) -> int:
        """Contributions added so far."""
        return self._terms

    def add(self, cts: Sequence[bytes]) -> None:
        """Check one contribution completely, then add it (:meth:`prepare`, :meth:`commit`).

        Raises:
            TypeError: ``cts`` is not a sequence of bytes.
            CkksError: wrong chunk count, a chunk from another context, position, layout or
                vector length, not fresh (terms != 1), truncated or padded, refused by SEAL,
                or one summand more than the layout's ``n_max``. The sum is then unchanged.
        """
        self.commit(self.prepare(cts))

    def prepare(self, cts: Sequence[bytes]) -> LoadedContribution:
        """Check one contribution completely and load it, without adding it yet.

        Raises:
            As :meth:`add`; the sum is unchanged either way.
        """
        if isinstance(cts, (bytes, str)) or not isinstance(cts, Sequence):
            raise TypeError("cts must be a sequence of bytes chunks")
        if not all(isinstance(c, bytes) for c in cts):
            raise TypeError("chunks must be bytes")
        if len(cts) != len(self._expected):
            raise CkksError(f"expected {len(self._expected)} ciphertext chunks, got {len(cts)}")
        if self._terms + 1 > self._expected[0].n_max:
            raise CkksError(f"more than n_max={self._expected[0].n_max} contributions")
        limit = _max_seal_bytes(self._pub.preset)
        parsed = []
        for want, chunk in zip(self._expected, cts, strict=True):
            h, payload = ChunkHeader.decode(chunk)
            if h.fingerprint != want.fingerprint:
                raise CkksError(f"chunk {want.index}: ciphertext from another context")
            if h != want:
                diff = [k for k in want.__dict__ if getattr(h, k) != getattr(want, k)]
                raise CkksError(f"chunk {want.index}: header differs from expected in {diff}")
            check_seal_header(payload, max_bytes=limit)
            parsed.append((h, payload))
        tc = self._pub.tenseal_context()
        return LoadedContribution(self, [_load_vector(tc, h, payload) for h, payload in parsed])

    def commit(self, loaded: LoadedContribution) -> None:
        """Add a contribution :meth:`prepare` of this sum loaded (once).

        Raises:
            TypeError: ``loaded`` is not a :class:`LoadedContribution`.
            ValueError: it was prepared by another sum, or already added.
            CkksError: one summand more than ``n_max`` (the sum is then unchanged).
        """
        if not isinstance(loaded, LoadedContribution):
            raise TypeError(f"loaded must be LoadedContribution, got {type(loaded).__name__}")
        if loaded._owner is not self:
            raise ValueError("contribution prepared by another sum, or already added")
        if self._terms + 1 > self._expected[0].n_max:
            raise CkksError(f"more than n_max={self._expected[0].n_max} contributions")
        loaded._owner = None
        if not self._acc:
            self._acc = loaded._vectors
        else:
            try:
                for acc, vec in zip(self._acc, loaded._vectors, strict=True):
                    acc.add_(vec)
            except Exception as exc:  # pragma: no cover - loaded vectors always match
                raise CkksError("SEAL refused the addition") from exc
        loaded._vectors = []
        self._terms += 1

    def result(self) -> list[bytes]:
        """The encrypted sum, one chunk per position, ``terms`` set to the contributions.

        Raises:
            ValueError: nothing was added.
            CkksError: SEAL failed to serialize (cannot happen for loaded vectors).
        """
        if not self._terms:
            raise ValueError("no contribution was added")
        out = []
        for want, acc in zip(self._expected, self._acc, strict=True):
            try:
                sealed = vector_proto_ciphertext(acc.serialize())
            except CkksError:
                raise
            except Exception as exc:  # pragma: no cover
                raise CkksError("SEAL failed to serialize the sum") from exc
            out.append(replace(want, terms=self._terms).encode(sealed))
        return out
