"""Tunnels: pyngrok runs for real against a stand-in ngrok agent program; Colab's module is the
stand-in of tests/fake_colab (the ``fake_colab`` fixture), which behaves as colabtools does today.

The ngrok service cannot be reached from here, so the *binary* that pyngrok starts is replaced
by a small script that prints what the real agent prints (log lines, error codes) and answers its
local API. Everything in pyngrok and in rest_api_flask.tunnel runs unchanged. The "binary cannot
be installed" path runs for real (the download fails offline) in test_server.py.
"""

from __future__ import annotations

import json

import pytest

from rest_api_flask.tunnel import TunnelError, open_colab_proxy, open_ngrok, open_tunnel, resolve_authtoken

from server_helpers import agent_log, fake_ngrok_binary

def _fake_ngrok(tmp_path, mode):
    from pyngrok import conf

    binary, log = fake_ngrok_binary(tmp_path, mode)
    config = conf.PyngrokConfig(ngrok_path=str(binary), config_path=str(tmp_path / "ngrok.yml"), startup_timeout=10)
    return config, log


def test_ngrok_tunnel_opens_with_basic_auth_and_closes(tmp_path):
    config, log = _fake_ngrok(tmp_path, "ok")
    tunnel = open_ngrok(5123, "tok-123", auth="demo:s3cret", pyngrok_config=config)
    assert tunnel.public_url == "https://fake-tunnel.ngrok-free.app"
    entries = agent_log(log)
    assert entries[0]["argv"][entries[0]["argv"].index("--authtoken") + 1] == "tok-123"
    post = next(e for e in entries if "post" in e)
    assert "5123" in json.dumps(post["body"]) and post["body"]["basic_auth"] == ["demo:s3cret"]
    tunnel.close()
    assert any("delete" in e for e in agent_log(log))


@pytest.mark.parametrize("mode, words", [("4018", "authtoken"), ("108", "run the start cell again")])
def test_known_ngrok_errors_say_what_to_do(tmp_path, mode, words):
    config, _ = _fake_ngrok(tmp_path, mode)
    with pytest.raises(TunnelError) as info:
        open_ngrok(5123, "tok-123", pyngrok_config=config)
    assert f"ERR_NGROK_{mode}" in str(info.value) and words in str(info.value)


def test_no_token_is_refused_before_starting_anything():
    with pytest.raises(TunnelError, match="--ngrok-authtoken"):
        open_ngrok(5123, None)


def test_outside_colab_no_secret_and_no_proxy(monkeypatch):
    monkeypatch.delenv("NGROK_AUTHTOKEN", raising=False)
    assert resolve_authtoken(None) is None
    with pytest.raises(TunnelError, match="only inside Google Colab"):
        open_colab_proxy(5000)


def test_token_sources_in_order(monkeypatch, fake_colab):
    monkeypatch.setenv("FAKE_COLAB_SECRETS", json.dumps({"NGROK_AUTHTOKEN": "from-colab"}))
    assert resolve_authtoken(None) == "from-colab"
    monkeypatch.setenv("NGROK_AUTHTOKEN", "from-env")
    assert resolve_authtoken(None) == "from-env"
    assert resolve_authtoken("from-flag") == "from-flag"
    monkeypatch.delenv("NGROK_AUTHTOKEN")
    monkeypatch.setenv("FAKE_COLAB_SECRETS", json.dumps({"NGROK_AUTHTOKEN": None}))  # no notebook access
    assert resolve_authtoken(None) is None
    monkeypatch.setenv("FAKE_COLAB_SECRETS", "{}")  # no such secret
    assert resolve_authtoken(None) is None


def test_colab_proxy(fake_colab):
    tunnel = open_tunnel("colab", 5000)
    assert tunnel.public_url == "https://5000-m-s-fake.colab.googleusercontent.com"
    assert open_tunnel("none", 5000) is None


def test_colab_proxy_from_a_server_process_says_what_to_do(monkeypatch, fake_colab):
    import google.colab.output

    def no_kernel(js, ignore_result=False, timeout_sec=None):  # what eval_js does in a process that is not the notebook's kernel
        raise AttributeError("'NoneType' object has no attribute 'kernel'")

    monkeypatch.setattr(google.colab.output, "eval_js", no_kernel)
    with pytest.raises(TunnelError, match=r"notebook's kernel.*proxy_url\(5000\)"):
        open_tunnel("colab", 5000)


def test_colab_proxy_without_an_answer_says_so(monkeypatch, fake_colab):
    from maskrcnn_finetune import colab

    monkeypatch.setenv("FAKE_COLAB_BROWSER", "absent")  # no browser tab answers: eval_js times out
    monkeypatch.setattr(colab, "PROXY_TIMEOUT_S", 0.2)
    with pytest.raises(TunnelError, match=r"did not give a proxy URL for the port within 0.2 s"):
        open_tunnel("colab", 5001)
