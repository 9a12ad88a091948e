"""Keys and proofs, without sockets."""
import os

import pytest

from kadeploy.control import auth
from kadeploy.errors import UsageError


def test_data_key_depends_on_key_and_token():
    assert auth.data_key(None, "t") == b"t"
    assert auth.data_key(b"k" * 16, "t") != auth.data_key(b"k" * 16, "u") != b"t"


def test_load_key_sources(tmp_path, monkeypatch):
    monkeypatch.delenv(auth.ENV_KEY, raising=False)
    monkeypatch.delenv(auth.ENV_KEY_FILE, raising=False)
    assert auth.load_key(None) is None
    f = tmp_path / "key"
    f.write_bytes(b"0123456789abcdef0123\n")
    os.chmod(f, 0o600)
    assert auth.load_key(str(f)) == b"0123456789abcdef0123"
    monkeypatch.setenv(auth.ENV_KEY_FILE, str(f))
    assert auth.load_key(None) == b"0123456789abcdef0123"
    monkeypatch.delenv(auth.ENV_KEY_FILE)
    monkeypatch.setenv(auth.ENV_KEY, "from-the-environment-1234")
    assert auth.load_key(None) == b"from-the-environment-1234"


def test_load_key_refuses_short_or_missing(tmp_path):
    f = tmp_path / "key"
    f.write_bytes(b"short\n")
    with pytest.raises(UsageError, match="at least 16"):
        auth.load_key(str(f))
    with pytest.raises(UsageError, match="cannot read key file"):
        auth.load_key(str(tmp_path / "absent"))


def test_load_key_warns_when_others_can_read(tmp_path):
    f = tmp_path / "key"
    f.write_bytes(b"x" * 32)
    os.chmod(f, 0o644)
    said = []
    auth.load_key(str(f), warn=said.append)
    assert said and "readable by others" in said[0]
