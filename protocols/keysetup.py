"""CKKS key setup without a dealer: a short sans-IO session per key epoch, reused by rounds.

Design choice: key setup is its own session (not stages of every round). A CKKS secret key
is worth reusing across rounds (generation plus distribution cost about 50 ms and 63 KB per
member for N=4096), while its lifetime is a *membership* matter: a new epoch, hence a new
key, whenever the members change (a leaver must not read later sums, a joiner earlier ones)
or on request. A round then only names the epoch's context fingerprint in its
:class:`secagg.protocols.context.RoundContext`; a ciphertext of any other epoch is refused by
fingerprint.

Stages (server: ``advertise`` -> ``distribute`` -> ``confirm``):

1. ``start()``: each member draws a fresh X25519 key pair and advertises the public key
   (signed with its identity key in active mode).
2. The server relays the roster of advertised members to all of them. Everyone computes the
   leader from the public epoch digest (:meth:`EpochContext.leader`). The leader generates the
   secret context for the config's preset and, for each other member ``v``, AEAD-encrypts
   its serialization under ``HKDF(X25519(leader, v), salt = epoch digest, info = protocol,
   epoch, purpose, leader, recipient)`` with associated data binding epoch digest, leader,
   recipient and context fingerprint; it sends the keyless public context, a signature over
   (epoch digest, leader, fingerprint) in active mode, and the ciphertexts.
3. The server keeps the public context (it never sees a secret key: the bytes it relays are
   AEAD ciphertexts, and :meth:`CkksPublicContext.from_bytes` refuses any key material) and
   relays each member its ciphertext. A member checks the leader, the signature (active),
   opens the ciphertext, loads the context and checks its fingerprint against the public one,
   then confirms the fingerprint. The leader gets an empty delivery and checks the public
   context relayed is its own.
4. Closing ``confirm`` yields :class:`EpochKeys`: the public context and the holders.

Passive mode trusts the server as a relay. Without identity keys nothing binds an advertised
X25519 key to its member, so a server that substitutes its own keys sits in the middle of every
leader-to-member channel: it opens the leader's delivery, re-encrypts it to each member as the
leader, and every member confirms the same fingerprint while the server holds the secret key
(``tests/protocols/test_ckks_passive_attack.py`` runs that attack). No protocol can prevent
this without a PKI, and where there is one, active mode uses it. A member therefore takes part
in a passive setup only when its own caller says so (``trust_relay=True``; the runtime passes
it under ``--insecure`` only), so a server cannot downgrade an active deployment by proposing a
passive epoch.

A leader that never distributes ends the setup with :class:`ThresholdError`; the caller starts
the next epoch (the digest changes, so does the leader). Members need a session each time;
new members get the key exactly like the others, in the next epoch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from secagg import kex
from secagg.aead import Aead
from secagg.ckks import CkksPreset, CkksPublicContext, CkksSecretContext
from secagg.errors import CkksError, InvalidCiphertext, InvalidKeyError, InvalidSignature
from secagg.protocols import labels
from secagg.protocols.epoch import EpochContext
from secagg.protocols.errors import LocalProtocolError, RemoteProtocolError, ThresholdError
from secagg.protocols.messages import (
    KeyAdvert,
    KeyConfirm,
    KeyDelivery,
    KeyDistribution,
    KeyRoster,
    KeyRosterEntry,
    Message,
)
from secagg.protocols.participant import ClientBase, ServerBase
from secagg.protocols.transitions import (
    ClientStage,
    ServerStage,
    key_setup_client_table,
    key_setup_server_table,
)
from secagg.sign import SigningKey

__all__ = ["EpochKeys", "KeySetupClient", "KeySetupServer"]


@dataclass(frozen=True)
class EpochKeys:
    """What a key setup leaves the server: the epoch, the keyless context, the holders."""

    epoch: int
    public: CkksPublicContext
    holders: tuple[int, ...]

    @property
    def fingerprint(self) -> bytes:
        """The context fingerprint every round of the epoch binds."""
        return self.public.fingerprint


def _preset(ectx: EpochContext) -> CkksPreset:
    layout = ectx.config.ckks_layout
    assert layout is not None  # an EpochContext always has a CKKS config
    return layout.preset


def _pair_aead(
    ectx: EpochContext, mine: kex.KeyPair, peer: tuple[int, bytes], leader: int, to: int
) -> Aead:
    """The AEAD under which ``leader`` sends the key to ``to``; ``peer`` is (id, public key)."""
    try:
        key = kex.agree(mine, peer[1], salt=ectx.digest,
                        info=labels.key_kex_info(ectx, leader, to))
    except InvalidKeyError:
        raise RemoteProtocolError("degenerate key-setup public key", party=peer[0]) from None
    return Aead(key)


class KeySetupClient(ClientBase[EpochContext]):
    """One member in a key setup; :attr:`secret_context` is its key once DONE."""

    def __init__(
        self, ectx: EpochContext, client_id: int, *, identity: SigningKey | None = None,
        trust_relay: bool = False,
    ) -> None:
        """Create the member's session.

        ``trust_relay`` must be True for a passive epoch: the caller, from its own
        configuration, accepts that the server can learn the key (see the module docstring).
        It is ignored in active mode, where the key setup is authenticated.

        Raises:
            TypeError: ``ectx`` is not an EpochContext.
            LocalProtocolError: not a member; (active mode) a missing or wrong identity;
                (passive mode) ``trust_relay`` not True.
        """
        super().__init__(ectx, client_id, key_setup_client_table())
        if not ectx.config.active and trust_relay is not True:
            raise LocalProtocolError(
                "a passive CKKS key setup trusts the server as a relay (it can substitute "
                "the key-exchange keys and learn the secret key); refused unless the caller "
                "passes trust_relay=True (insecure deployments only)")
        if ectx.config.active and (not isinstance(identity, SigningKey)
                                   or identity.verify_key != ectx.verify_key(client_id)):
            raise LocalProtocolError("active mode needs the member's registered signing key")
        self._identity = identity if ectx.config.active else None
        self._kx: kex.KeyPair | None = None
        self._roster: dict[int, bytes] = {}
        self._leader: int | None = None
        self._secret: CkksSecretContext | None = None

    @property
    def leader(self) -> int | None:
        """The leader, once the roster arrived."""
        return self._leader

    @property
    def secret_context(self) -> CkksSecretContext:
        """The epoch's secret context.

        Raises:
            LocalProtocolError: the setup is not DONE.
        """
        if self._stage is not ClientStage.DONE or self._secret is None:
            raise LocalProtocolError(f"no key in stage {self._stage.value}")
        return self._secret

    def start(self, x: Any = None, *, weight: float | None = None) -> list[Message]:
        """Advertise a fresh key-setup public key (key setup takes no input).

        Raises:
            LocalProtocolError: started twice, aborted, or given an input.
        """
        return super().start(x, weight=weight)

    def _on_start(self, x: Any, weight: float | None) -> list[Message]:
        if x is not None or weight is not None:
            raise LocalProtocolError("key setup takes no input")
        self._kx = kex.KeyPair.generate()
        pub = self._kx.public_bytes()
        sig = b""
        if self._identity is not None:
            sig = self._identity.sign(labels.key_advert_payload(self._ctx, self._id, pub))
        return [KeyAdvert(self._ctx.epoch, self._id, pub, sig)]

    def _dispatch(self, msg: Message) -> list[Message]:
        self._check_round(msg)
        if isinstance(msg, KeyRoster):
            return self._on_roster(msg)
        if isinstance(msg, KeyDelivery):
            return self._on_delivery(msg)
        raise RemoteProtocolError(f"unexpected {msg.TYPE.name}")  # pragma: no cover (table)

    def _on_roster(self, msg: KeyRoster) -> list[Message]:
        ectx, me = self._ctx, self._id
        entries = {e.client_id: e for e in msg.entries}
        assert self._kx is not None
        mine = entries.get(me)
        if mine is None or mine.kx_public != self._kx.public_bytes():
            raise RemoteProtocolError("roster omits or alters my key")
        if not all(ectx.is_client(u) for u in entries):
            raise RemoteProtocolError("roster names non-members")
        if len({e.kx_public for e in msg.entries}) != len(entries):
            raise RemoteProtocolError("roster public keys are not all distinct")
        if len(entries) < ectx.config.threshold:
            raise ThresholdError(f"only {len(entries)} members advertised")
        if self._identity is not None:
            for e in msg.entries:
                try:
                    ectx.verify_key(e.client_id).verify(
                        e.signature, labels.key_advert_payload(ectx, e.client_id, e.kx_public))
                except InvalidSignature:
                    raise RemoteProtocolError("bad key signature", party=e.client_id) from None
        self._roster = {u: e.kx_public for u, e in entries.items()}
        self._leader = ectx.leader(entries)
        return [self._distribute()] if self._leader == me else []

    def _distribute(self) -> KeyDistribution:
        ectx, me = self._ctx, self._id
        assert self._kx is not None
        secret = CkksSecretContext.generate(_preset(ectx))
        public = secret.public_context()
        blob = secret.serialize_secret()
        cts = []
        for v in sorted(self._roster.keys() - {me}):
            ad = labels.key_delivery_associated_data(ectx, me, v, public.fingerprint)
            aead = _pair_aead(ectx, self._kx, (v, self._roster[v]), me, v)
            cts.append((v, aead.encrypt(blob, ad)))
        sig = b""
        if self._identity is not None:
            sig = self._identity.sign(
                labels.key_distribution_payload(ectx, me, public.fingerprint))
        self._secret = secret
        return KeyDistribution(ectx.epoch, me, public.to_bytes(), sig, tuple(cts))

    def _on_delivery(self, msg: KeyDelivery) -> list[Message]:
        ectx, me, leader = self._ctx, self._id, self._leader
        if msg.leader != leader:
            raise RemoteProtocolError("key delivered from someone other than the leader")
        if leader == me:
            assert self._secret is not None
            if msg.ciphertext or msg.public_context != self._secret.public_context().to_bytes():
                raise RemoteProtocolError("server relayed another context than mine")
        else:
            self._secret = self._open(msg, leader)
        assert self._secret is not None
        self._kx = None
        return [KeyConfirm(ectx.epoch, me, self._secret.fingerprint)]

    def _open(self, msg: KeyDelivery, leader: int | None) -> CkksSecretContext:
        ectx, me = self._ctx, self._id
        assert self._kx is not None and leader is not None
        try:
            public = CkksPublicContext.from_bytes(msg.public_context)
        except CkksError as exc:
            raise RemoteProtocolError(f"public context refused: {exc}", party=leader) from None
        fp = public.fingerprint
        if self._identity is not None:
            try:
                ectx.verify_key(leader).verify(
                    msg.signature, labels.key_distribution_payload(ectx, leader, fp))
            except InvalidSignature:
                raise RemoteProtocolError("key not signed by the leader", party=leader) from None
        aead = _pair_aead(ectx, self._kx, (leader, self._roster[leader]), leader, me)
        try:
            blob = aead.decrypt(msg.ciphertext,
                                labels.key_delivery_associated_data(ectx, leader, me, fp))
            secret = CkksSecretContext.from_bytes(blob)
        except (InvalidCiphertext, CkksError):
            raise RemoteProtocolError("key delivery does not open", party=leader) from None
        if secret.fingerprint != fp or secret.preset != _preset(ectx):
            raise RemoteProtocolError("delivered key does not match its context", party=leader)
        return secret

    def _wipe(self) -> None:
        self._kx = None
        self._roster.clear()
        if self._stage is not ClientStage.DONE:  # on abort the key goes too
            self._secret = None


class KeySetupServer(ServerBase[EpochContext]):
    """Relays a key setup; holds the public context only. :attr:`keys` once DONE."""

    def __init__(self, ectx: EpochContext) -> None:
        """Create the server's session.

        Raises:
            TypeError: ``ectx`` is not an EpochContext.
        """
        super().__init__(ectx, key_setup_server_table())
        self._adverts: dict[int, KeyAdvert] = {}
        self._keys_seen: set[bytes] = set()
        self._u1: tuple[int, ...] = ()
        self._leader: int | None = None
        self._public: CkksPublicContext | None = None
        self._dist: KeyDistribution | None = None
        self._keys: EpochKeys | None = None

    @property
    def leader(self) -> int | None:
        """The leader, once ``advertise`` closed."""
        return self._leader

    @property
    def keys(self) -> EpochKeys:
        """The epoch's public context and holders.

        Raises:
            LocalProtocolError: the setup is not DONE.
        """
        if self._keys is None:
            raise LocalProtocolError(f"no keys in stage {self._stage.value}")
        return self._keys

    def _accept(self, sender: int, msg: Message) -> None:
        if isinstance(msg, KeyAdvert):
            self._accept_advert(sender, msg)
        elif isinstance(msg, KeyDistribution):
            self._accept_distribution(sender, msg)
        elif isinstance(msg, KeyConfirm):
            assert self._public is not None
            if msg.fingerprint != self._public.fingerprint:
                raise RemoteProtocolError("confirmed another context")

    def _accept_advert(self, sender: int, msg: KeyAdvert) -> None:
        if msg.kx_public in self._keys_seen:
            raise RemoteProtocolError("public key reused")
        if self._ctx.config.active:
            try:
                self._ctx.verify_key(sender).verify(
                    msg.signature, labels.key_advert_payload(self._ctx, sender, msg.kx_public))
            except InvalidSignature:
                raise RemoteProtocolError("key advert not signed by the member") from None
        self._keys_seen.add(msg.kx_public)
        self._adverts[sender] = msg

    def _accept_distribution(self, sender: int, msg: KeyDistribution) -> None:
        ectx = self._ctx
        try:
            public = CkksPublicContext.from_bytes(msg.public_context)
        except CkksError as exc:
            raise RemoteProtocolError(f"public context refused: {exc}") from None
        if public.preset != _preset(ectx):
            raise RemoteProtocolError("context of another preset than the config's")
        if {r for r, _ in msg.ciphertexts} != set(self._u1) - {sender}:
            raise RemoteProtocolError("key not sent to exactly the other advertised members")
        if ectx.config.active:
            try:
                ectx.verify_key(sender).verify(
                    msg.signature, labels.key_distribution_payload(ectx, sender,
                                                                   public.fingerprint))
            except InvalidSignature:
                raise RemoteProtocolError("key distribution not signed by the leader") from None
        self._public, self._dist = public, msg

    def _close(self, stage: ServerStage, received: frozenset[int]) -> dict[int, Message]:
        ectx, t = self._ctx, self._ctx.config.threshold
        if stage is ServerStage.DISTRIBUTE:
            return self._deliveries()
        if len(received) < t:
            raise ThresholdError(f"only {len(received)} members completed {stage.value}, "
                                 f"need {t}")
        if stage is ServerStage.ADVERTISE:
            self._u1 = tuple(sorted(received))
            self._leader = ectx.leader(received)
            roster = KeyRoster(ectx.epoch, tuple(
                KeyRosterEntry(u, self._adverts[u].kx_public, self._adverts[u].signature)
                for u in self._u1))
            self._adverts.clear()
            out: dict[int, Message] = {u: roster for u in self._u1}
            return out
        assert self._public is not None
        self._keys = EpochKeys(ectx.epoch, self._public, tuple(sorted(received)))
        return {}

    def _deliveries(self) -> dict[int, Message]:
        dist, leader = self._dist, self._leader
        if dist is None or leader is None:
            raise ThresholdError("the leader distributed no key", party=leader)
        epoch, pub, sig = self._ctx.epoch, dist.public_context, dist.signature
        out: dict[int, Message] = {v: KeyDelivery(epoch, leader, pub, sig, ct)
                                   for v, ct in dist.ciphertexts}
        out[leader] = KeyDelivery(epoch, leader, pub, sig, b"")
        self._dist = None  # the relayed ciphertexts are not kept
        return dict(sorted(out.items()))

    def _next_expected(self, out: dict[int, Message]) -> frozenset[int]:
        if self._stage is ServerStage.DISTRIBUTE:  # only the leader sends in this stage
            return frozenset({self._leader}) if self._leader is not None else frozenset()
        return frozenset(out)
