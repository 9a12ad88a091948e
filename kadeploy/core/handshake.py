"""The mutual challenge-response, once, without I/O: fed messages, it gives messages
and a verdict. Control connections (client/server) and data links (child/parent)
both use it; only the role names, the key and what the proofs cover differ.

    asker    -> answerer  its nonce (inside Hello, Go or DataHello)
    answerer -> asker     Challenge(nonce, proof of the answerer)
    asker    -> answerer  Auth(proof of the asker)

Each proof is an HMAC-SHA256 over a domain string, the prover's role, both nonces and
the context (the fields of the request, so none can be changed in transit). A
recorded proof is useless later because the other side's nonce is new every time
(no replay), and a side without the key can neither join nor impersonate the
answerer (the answerer proves first, so an asker never proves itself to a stranger).

After a successful handshake both sides can have the same session keys, derived by
HKDF from the key, both nonces and the context: one MAC key per direction for the
frames that follow (kadeploy.core.protocol.FrameAuth). They are derived when first
asked for: a data link never asks (raw bytes follow it), so its handshake, on the
path to a stream's first byte, does not load cryptography.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

from kadeploy.core import protocol as P
from kadeploy.core.proofs import (CONTROL_ANSWERER, CONTROL_ASKER, NONCE_BYTES, check,  # noqa: F401
                                  proof, well_formed_nonce)

_SESSION_INFO = b"kadeploy-session-1"
MAC_KEY_BYTES = 32


class HandshakeFailed(Exception):
    """The handshake cannot succeed. `reason` is the one line for our user; `refuse`
    is what to tell the peer in a Refuse (None: nothing, just close)."""

    def __init__(self, reason: str, refuse: Optional[str] = None) -> None:
        super().__init__(reason)
        self.reason, self.refuse = reason, refuse


@dataclass(frozen=True)
class SessionKeys:
    """What both ends share after the handshake: a MAC key for each direction and
    the material further keys (the stream's encryption) are derived from."""
    asker_to_answerer: bytes
    answerer_to_asker: bytes
    material: bytes

    def for_side(self, asker: bool) -> Tuple[bytes, bytes]:
        """(key of what we send, key of what we receive)."""
        if asker:
            return self.asker_to_answerer, self.answerer_to_asker
        return self.answerer_to_asker, self.asker_to_answerer


def derive_session(key: bytes, asker_nonce: str, answerer_nonce: str, context: str) -> SessionKeys:
    from cryptography.hazmat.primitives import hashes   # only with a key: not on a keyless start-up
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF
    okm = HKDF(algorithm=hashes.SHA256(), length=3 * MAC_KEY_BYTES,
               salt=bytes.fromhex(asker_nonce) + bytes.fromhex(answerer_nonce),
               info=_SESSION_INFO + b"|" + context.encode()).derive(key)
    n = MAC_KEY_BYTES
    return SessionKeys(okm[:n], okm[n:2 * n], okm[2 * n:])


@dataclass(frozen=True)
class Wording:
    """What each failure is called, in the words of one kind of connection."""
    asker: str                  # role names inside the proofs
    answerer: str
    answerer_unproven: str      # the asker's error when the answerer's proof is wrong
    answerer_unproven_refuse: str
    asker_unproven: str         # the answerer's error when the asker's proof is wrong
    asker_keyless: str = "malformed nonce"   # the answerer has a key, the asker offered no nonce
    unasked_challenge: str = ""              # the asker has no key and was challenged
    answerer_keyless: str = ""               # the asker has a key, the answerer did not challenge
    answerer_keyless_refuse: str = ""


CONTROL = Wording(
    asker=CONTROL_ASKER, answerer=CONTROL_ANSWERER,
    answerer_unproven="the server could not prove it knows the key: a different key, "
                      "or not the server you meant",
    answerer_unproven_refuse="server proof does not match",
    asker_unproven="authentication failed: wrong key, or a replayed handshake",
    asker_keyless="this server requires a key (--key-file or $KADEPLOY_KEY)",
    unasked_challenge="the server sent a challenge we did not ask for",
    answerer_keyless="the server has no key: refusing to join an unauthenticated session",
    answerer_keyless_refuse="this client requires a key")

DATA = Wording(
    asker="child", answerer="parent",
    answerer_unproven="the parent could not prove it belongs to this deployment",
    answerer_unproven_refuse="parent proof does not match",
    asker_unproven="not a member of this deployment: proof does not match")


def _ours(nonce: Optional[str]) -> str:
    # Our own nonce comes from our code, never from a peer: a bad one is a bug here.
    if not well_formed_nonce(nonce):
        raise ValueError(f"not a nonce of {NONCE_BYTES} bytes in hex: {nonce!r}")
    return nonce


class _Proven:
    """The session keys of a handshake once it succeeded, derived on first use."""

    _derivation: Optional[Tuple[bytes, str, str, str]] = None
    _session: Optional[SessionKeys] = None

    def _proved(self, key: bytes, asker_nonce: str, answerer_nonce: str, context: str) -> None:
        self._derivation = (key, asker_nonce, answerer_nonce, context)

    @property
    def session(self) -> Optional[SessionKeys]:
        """None until the handshake succeeded."""
        if self._session is None and self._derivation is not None:
            self._session = derive_session(*self._derivation)
        return self._session


class Asker(_Proven):
    """The side that asks (a client, a child). Its nonce (fresh for each handshake,
    from kadeploy.control.auth.new_nonce) goes in the request; None without a key.
    `react` takes the first reply and says what to send next."""

    def __init__(self, key: Optional[bytes], wording: Wording, nonce: Optional[str]) -> None:
        self.key, self.wording = key, wording
        self.nonce = _ours(nonce) if key is not None else None

    def react(self, reply: P.Message, context: str) -> Optional[P.Auth]:
        """An Auth to send when `reply` is the answerer's valid Challenge; None when
        `reply` is already the answer (no key on either side, or a Refuse);
        HandshakeFailed when the handshake cannot succeed."""
        w = self.wording
        if isinstance(reply, P.Challenge):
            if self.key is None:
                raise HandshakeFailed(w.unasked_challenge)
            return self.answer(reply, context)
        if self.key is not None and not isinstance(reply, P.Refuse):
            raise HandshakeFailed(w.answerer_keyless, refuse=w.answerer_keyless_refuse)
        return None

    def answer(self, challenge: P.Challenge, context: str) -> P.Auth:
        """Our Auth for the answerer's Challenge; HandshakeFailed if its proof is wrong."""
        w = self.wording
        if not well_formed_nonce(challenge.nonce) or not check(
                proof(self.key, w.answerer, self.nonce, challenge.nonce, context), challenge.proof):
            raise HandshakeFailed(w.answerer_unproven, refuse=w.answerer_unproven_refuse)
        self._proved(self.key, self.nonce, challenge.nonce, context)
        return P.Auth(proof=proof(self.key, w.asker, self.nonce, challenge.nonce, context))


class Answerer(_Proven):
    """The side that is asked (the server, a parent). With a key it proves first
    with its Challenge, then checks the asker's Auth; without one (a keyless
    server) there is nothing to do. `nonce` is ours, fresh for this handshake."""

    def __init__(self, key: Optional[bytes], wording: Wording, asker_nonce: Optional[str],
                 context: str, nonce: str) -> None:
        self.key, self.wording, self.context = key, wording, context
        self.asker_nonce = asker_nonce
        self.nonce = _ours(nonce)
        if key is not None and asker_nonce is None:
            raise HandshakeFailed(wording.asker_keyless, refuse=wording.asker_keyless)
        if key is not None and not well_formed_nonce(asker_nonce):
            raise HandshakeFailed("malformed nonce", refuse="malformed nonce")

    def challenge(self) -> Optional[P.Challenge]:
        """The Challenge to send, or None when no key is in play."""
        if self.key is None:
            return None
        return P.Challenge(nonce=self.nonce, proof=proof(
            self.key, self.wording.answerer, self.asker_nonce, self.nonce, self.context))

    def verify(self, reply: P.Message) -> None:
        """Nothing when `reply` is a valid Auth (`session` then has the keys);
        HandshakeFailed otherwise."""
        w = self.wording
        if isinstance(reply, P.Refuse):
            raise HandshakeFailed(f"the {w.asker} refused our proof: {reply.reason}")
        if not isinstance(reply, P.Auth):
            raise HandshakeFailed(f"expected Auth, got {type(reply).__name__}",
                                  refuse=f"expected Auth, got {type(reply).__name__}")
        if not check(proof(self.key, w.asker, self.asker_nonce, self.nonce, self.context), reply.proof):
            raise HandshakeFailed(w.asker_unproven, refuse=w.asker_unproven)
        self._proved(self.key, self.asker_nonce, self.nonce, self.context)
