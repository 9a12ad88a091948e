"""The challenge-response, without sockets: an asker and an answerer wired back to back."""
import pytest

from kadeploy.core import handshake as H
from kadeploy.core import protocol as P

KEY = b"k" * 32


def run(asker_key, answerer_key, wording=H.CONTROL, ctx="ctx", answerer_ctx=None):
    """One whole handshake through the wire format; (asker, answerer) on success."""
    asker = H.Asker(asker_key, wording)
    answerer = H.Answerer(answerer_key, wording, asker.nonce, answerer_ctx or ctx)
    challenge = answerer.challenge()
    reply = asker.react(P.parse_body(challenge.CODE, P.encode(challenge)[P.HEADER_SIZE:]), ctx)
    answerer.verify(P.parse_body(reply.CODE, P.encode(reply)[P.HEADER_SIZE:]))
    return asker, answerer


def test_proofs_bind_role_nonces_and_context():
    a, b = H.new_nonce(), H.new_nonce()
    p = H.proof(KEY, "client", a, b, "ctx")
    assert H.check(p, H.proof(KEY, "client", a, b, "ctx"))
    for other in (H.proof(KEY, "server", a, b, "ctx"), H.proof(KEY, "client", b, a, "ctx"),
                  H.proof(KEY, "client", a, H.new_nonce(), "ctx"),
                  H.proof(KEY, "client", a, b, "ctx2"), H.proof(b"x" * 32, "client", a, b, "ctx")):
        assert not H.check(p, other)


def test_nonces_are_fresh_and_checked():
    assert len({H.new_nonce() for _ in range(1000)}) == 1000
    assert H.well_formed_nonce(H.new_nonce())
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
    asker = H.Asker(KEY, H.CONTROL)
    first = H.Answerer(KEY, H.CONTROL, asker.nonce, "ctx")
    recorded = asker.react(first.challenge(), "ctx")
    second = H.Answerer(KEY, H.CONTROL, asker.nonce, "ctx")   # same Hello, new connection
    second.challenge()
    with pytest.raises(H.HandshakeFailed, match="replayed handshake"):
        second.verify(recorded)


def test_keyless_and_keyed_sides_meet():
    with pytest.raises(H.HandshakeFailed, match="requires a key"):
        H.Answerer(KEY, H.CONTROL, None, "ctx")
    with pytest.raises(H.HandshakeFailed, match="malformed nonce"):
        H.Answerer(KEY, H.CONTROL, "nothex", "ctx")
    keyless = H.Answerer(None, H.CONTROL, None, "ctx")
    assert keyless.challenge() is None
    with pytest.raises(H.HandshakeFailed, match="server has no key") as e:
        H.Asker(KEY, H.CONTROL).react(P.Welcome(node_id=1, software="x"), "ctx")
    assert e.value.refuse == "this client requires a key"
    challenge = H.Answerer(KEY, H.CONTROL, H.new_nonce(), "ctx").challenge()
    with pytest.raises(H.HandshakeFailed, match="did not ask for"):
        H.Asker(None, H.CONTROL).react(challenge, "ctx")
    assert H.Asker(None, H.CONTROL).react(P.Welcome(node_id=1, software="x"), "ctx") is None
    assert H.Asker(KEY, H.CONTROL).react(P.Refuse(reason="no"), "ctx") is None


def test_answerer_names_what_it_got():
    answerer = H.Answerer(KEY, H.DATA, H.new_nonce(), "1|0")
    answerer.challenge()
    with pytest.raises(H.HandshakeFailed, match="the child refused our proof: because"):
        answerer.verify(P.Refuse(reason="because"))
    with pytest.raises(H.HandshakeFailed, match="not a member of this deployment"):
        answerer.verify(P.Auth(proof="00" * 32))
