"""The challenge-response, without sockets: an asker and an answerer wired back to back.
The core draws no randomness: each side is given its nonce (kadeploy.control.auth's)."""
import pytest

from kadeploy.control import auth
from kadeploy.core import handshake as H
from kadeploy.core import protocol as P

KEY = b"k" * 32


def run(asker_key, answerer_key, wording=H.CONTROL, ctx="ctx", answerer_ctx=None):
    """One whole handshake through the wire format; (asker, answerer) on success."""
    asker = H.Asker(asker_key, wording, auth.new_nonce())
    answerer = H.Answerer(answerer_key, wording, asker.nonce, answerer_ctx or ctx, auth.new_nonce())
    challenge = answerer.challenge()
    reply = asker.react(P.parse_body(challenge.CODE, P.encode(challenge)[P.HEADER_SIZE:]), ctx)
    answerer.verify(P.parse_body(reply.CODE, P.encode(reply)[P.HEADER_SIZE:]))
    return asker, answerer


def test_proofs_bind_role_nonces_and_context():
    a, b = auth.new_nonce(), auth.new_nonce()
    p = H.proof(KEY, "client", a, b, "ctx")
    assert H.check(p, H.proof(KEY, "client", a, b, "ctx"))
    for other in (H.proof(KEY, "server", a, b, "ctx"), H.proof(KEY, "client", b, a, "ctx"),
                  H.proof(KEY, "client", a, auth.new_nonce(), "ctx"),
                  H.proof(KEY, "client", a, b, "ctx2"), H.proof(b"x" * 32, "client", a, b, "ctx")):
        assert not H.check(p, other)


def test_nonces_are_fresh_and_checked():
    assert len({auth.new_nonce() for _ in range(1000)}) == 1000
    assert H.well_formed_nonce(auth.new_nonce())
    for bad in (None, "", "zz" * 16, "ab" * 15, 5):
        assert not H.well_formed_nonce(bad)


@pytest.mark.parametrize("wording", [H.CONTROL, H.DATA])
def test_both_sides_agree_on_session_keys(wording):
    asker, answerer = run(KEY, KEY, wording)
    assert asker.session == answerer.session
    send, recv = asker.session.for_side(asker=True)
    assert (recv, send) == answerer.session.for_side(asker=False)
    assert send != recv
    # Fresh nonces: another handshake with the same key gives other keys.
    assert run(KEY, KEY, wording)[0].session != asker.session


def test_a_wrong_key_fails_on_the_answerers_proof_first():
    with pytest.raises(H.HandshakeFailed) as e:
        run(b"x" * 32, KEY)
    assert e.value.reason == H.CONTROL.answerer_unproven
    assert e.value.refuse == "server proof does not match"


def test_a_changed_context_fails():
    with pytest.raises(H.HandshakeFailed, match="could not prove"):
        run(KEY, KEY, answerer_ctx="other")


def test_a_replayed_auth_fails():
    asker = H.Asker(KEY, H.CONTROL, auth.new_nonce())
    first = H.Answerer(KEY, H.CONTROL, asker.nonce, "ctx", auth.new_nonce())
    recorded = asker.react(first.challenge(), "ctx")
    second = H.Answerer(KEY, H.CONTROL, asker.nonce, "ctx", auth.new_nonce())   # same Hello, new connection
    second.challenge()
    with pytest.raises(H.HandshakeFailed, match="replayed handshake"):
        second.verify(recorded)


def test_our_own_nonce_must_be_one():
    # A side's own nonce comes from our code: a missing or malformed one is a bug,
    # never a handshake with a guessable nonce.
    for bad in (None, "", "ab" * 15, "zz" * 16):
        with pytest.raises(ValueError, match="not a nonce"):
            H.Asker(KEY, H.CONTROL, bad)
        with pytest.raises(ValueError, match="not a nonce"):
            H.Answerer(KEY, H.CONTROL, auth.new_nonce(), "ctx", bad)
    assert H.Asker(None, H.CONTROL, None).nonce is None


def test_keyless_and_keyed_sides_meet():
    with pytest.raises(H.HandshakeFailed, match="requires a key"):
        H.Answerer(KEY, H.CONTROL, None, "ctx", auth.new_nonce())
    with pytest.raises(H.HandshakeFailed, match="malformed nonce"):
        H.Answerer(KEY, H.CONTROL, "nothex", "ctx", auth.new_nonce())
    keyless = H.Answerer(None, H.CONTROL, None, "ctx", auth.new_nonce())
    assert keyless.challenge() is None
    with pytest.raises(H.HandshakeFailed, match="server has no key") as e:
        H.Asker(KEY, H.CONTROL, auth.new_nonce()).react(P.Welcome(node_id=1, software="x"), "ctx")
    assert e.value.refuse == "this client requires a key"
    challenge = H.Answerer(KEY, H.CONTROL, auth.new_nonce(), "ctx", auth.new_nonce()).challenge()
    with pytest.raises(H.HandshakeFailed, match="did not ask for"):
        H.Asker(None, H.CONTROL, auth.new_nonce()).react(challenge, "ctx")
    assert H.Asker(None, H.CONTROL, auth.new_nonce()).react(P.Welcome(node_id=1, software="x"), "ctx") is None
    assert H.Asker(KEY, H.CONTROL, auth.new_nonce()).react(P.Refuse(reason="no"), "ctx") is None


def test_answerer_names_what_it_got():
    answerer = H.Answerer(KEY, H.DATA, auth.new_nonce(), "1|0", auth.new_nonce())
    answerer.challenge()
    with pytest.raises(H.HandshakeFailed, match="the child refused our proof: because"):
        answerer.verify(P.Refuse(reason="because"))
    with pytest.raises(H.HandshakeFailed, match="not a member of this deployment"):
        answerer.verify(P.Auth(proof="00" * 32))
