"""Tunnels: pyngrok runs for real against a stand-in ngrok agent program, pycloudflared's copy runs for real
with a stand-in cloudflared program (tests/cloudflared_stand_in.py); Colab's module is the stand-in of
tests/fake_colab (the ``fake_colab`` fixture), which behaves as colabtools does today.

The ngrok service and TryCloudflare cannot be reached from here, so the *programs* that pyngrok and
pycloudflared start are replaced by small scripts that print what the real ones print (log lines,
error codes) and answer the ngrok agent's local API. Everything in pyngrok, pycloudflared and
rest_api_flask.tunnel runs unchanged. The "ngrok cannot be installed" path runs for real (the
download fails offline) in test_server.py; cloudflared's download runs against a local server here.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
import yaml

import cloudflared_stand_in
from rest_api_flask.tunnel import (TunnelError, cloudflared_path, open_cloudflared, open_colab_proxy, open_ngrok,
                                   open_tunnel, resolve_authtoken)

from server_helpers import agent_log, fake_ngrok_binary


def _fake_ngrok(tmp_path, mode, **config_args):
    from pyngrok import conf

    binary, log = fake_ngrok_binary(tmp_path, mode)
    config = conf.PyngrokConfig(ngrok_path=str(binary), config_path=str(tmp_path / "ngrok.yml"), startup_timeout=10,
                                **config_args)
    return config, log


def test_ngrok_tunnel_opens_with_basic_auth_and_closes(tmp_path):
    """pyngrok 9 speaks ngrok's v3 endpoint API: basic auth goes in a traffic policy's basic-auth action."""
    config, log = _fake_ngrok(tmp_path, "ok")
    assert config.config_version == "3"  # the pyngrok that users get (requirements.txt: pyngrok>=7.0)
    tunnel = open_ngrok(5123, "tok-123", auth="demo:s3cret12", pyngrok_config=config)
    assert tunnel.public_url == "https://fake-tunnel.ngrok-free.app"
    entries = agent_log(log)
    assert entries[0]["argv"][entries[0]["argv"].index("--authtoken") + 1] == "tok-123"
    post = next(e for e in entries if "post" in e)
    assert post["post"] == "/api/endpoints" and post["body"]["upstream"]["url"] == "http://localhost:5123"
    assert "basic_auth" not in post["body"]
    policy = yaml.safe_load(post["body"]["traffic_policy"])  # the agent reads the policy as YAML
    assert policy == {"on_http_request": [{"actions": [{"type": "basic-auth",
                                                        "config": {"credentials": ["demo:s3cret12"]}}]}]}
    tunnel.close()
    assert any("delete" in e and e["delete"].startswith("/api/endpoints/") for e in agent_log(log))


def test_the_fake_agent_refuses_what_the_v3_api_does_not_have(tmp_path):
    """pyngrok's own auth= becomes basic_auth, which ngrok's v3 endpoints do not have: the stand-in refuses it."""
    from pyngrok import ngrok
    from pyngrok.exception import PyngrokNgrokHTTPError

    config, _ = _fake_ngrok(tmp_path, "ok")
    config.auth_token = "tok-123"
    try:
        with pytest.raises(PyngrokNgrokHTTPError, match="basic_auth"):
            ngrok.connect("5123", "http", pyngrok_config=config, auth="demo:s3cret12")
    finally:
        ngrok.kill(pyngrok_config=config)


def test_ngrok_v2_tunnels_keep_basic_auth(tmp_path):
    """pyngrok 7 and 8 (and config_version="2") speak the v2 tunnel API, where basic_auth is a field."""
    config, log = _fake_ngrok(tmp_path, "ok", config_version="2")
    tunnel = open_ngrok(5123, "tok-123", auth="demo:s3cret12", pyngrok_config=config)
    post = next(e for e in agent_log(log) if "post" in e)
    assert post["post"] == "/api/tunnels" and post["body"]["basic_auth"] == ["demo:s3cret12"]
    assert "traffic_policy" not in post["body"]
    tunnel.close()


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
    import IPython

    monkeypatch.setattr(IPython, "get_ipython", lambda: None)  # a process the notebook started: no kernel there
    with pytest.raises(TunnelError, match=r"notebook's kernel \(AttributeError.*proxy_url\(5000\)"):
        open_tunnel("colab", 5000)


def test_outside_the_notebooks_kernel_the_secret_is_not_read_and_nothing_raises(monkeypatch, fake_colab):
    """In a !python child of Colab's kernel, colabtools' userdata.get fails with AttributeError (no kernel)."""
    import IPython
    from google.colab import userdata

    monkeypatch.setenv("FAKE_COLAB_SECRETS", json.dumps({"NGROK_AUTHTOKEN": "from-colab"}))
    assert resolve_authtoken(None) == "from-colab"  # in the notebook's kernel
    monkeypatch.setattr(IPython, "get_ipython", lambda: None)
    with pytest.raises(AttributeError, match="'NoneType' object has no attribute 'kernel'"):
        userdata.get("NGROK_AUTHTOKEN")  # what the stand-in does there, as colabtools
    assert resolve_authtoken(None) is None
    monkeypatch.setenv("NGROK_AUTHTOKEN", "from-the-kernel")  # what request_ngrok_token hands down
    assert resolve_authtoken(None) == "from-the-kernel"
    monkeypatch.delenv("NGROK_AUTHTOKEN")
    with pytest.raises(TunnelError) as info:
        open_ngrok(5123, resolve_authtoken(None))
    message = str(info.value)
    assert "\n" not in message and "cannot read Colab secrets" in message and "settings cell again" in message
    assert "NGROK_AUTHTOKEN=... python rest_api_flask/flask_app.py" in message


def test_colab_proxy_without_an_answer_says_so(monkeypatch, fake_colab):
    from maskrcnn_finetune import colab

    monkeypatch.setenv("FAKE_COLAB_BROWSER", "absent")  # no browser tab answers: eval_js times out
    monkeypatch.setattr(colab, "PROXY_TIMEOUT_S", 0.2)
    with pytest.raises(TunnelError, match=r"did not give a proxy URL for the port within 0.2 s"):
        open_tunnel("colab", 5001)


# --- cloudflared ------------------------------------------------------------------------------------


class _Hello(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        body = f"hello from {self.path}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def local_service():
    """A tiny HTTP service on 127.0.0.1 for the tunnel to point at; yields its port."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_cloudflared_quick_tunnel_opens_and_closes(fake_cloudflared, local_service):
    tunnel = open_cloudflared(local_service)
    assert tunnel.kind == "cloudflared"
    assert tunnel.public_url.startswith("https://") and tunnel.public_url.endswith(".trycloudflare.com")
    started, opened = cloudflared_stand_in.notes(fake_cloudflared)
    assert started["argv"] == ["tunnel", "--no-autoupdate", "--url", f"http://127.0.0.1:{local_service}"]
    assert opened["url"] == tunnel.public_url  # the address cloudflared printed in its banner
    # through the stand-in's forwarding (standing for Cloudflare's edge) to the service
    assert requests.get(opened["forward"] + "/health", timeout=10).text == "hello from /health"
    assert cloudflared_stand_in.alive(started["pid"])
    tunnel.close()
    assert not cloudflared_stand_in.alive(started["pid"])


OPEN_AND_LEAVE = """
import json, sys
from rest_api_flask.tunnel import open_cloudflared
open_cloudflared(int(sys.argv[1]))
print(json.dumps("opened"))
"""


def test_a_process_that_ends_without_closing_its_cloudflared_stops_it(fake_cloudflared, local_service):
    """A notebook kernel shut down (or any process ending normally) with a quick tunnel open does not leave
    cloudflared running without its parent."""
    import subprocess
    import sys
    from pathlib import Path

    run = subprocess.run([sys.executable, "-c", OPEN_AND_LEAVE, str(local_service)], capture_output=True, text=True,
                         timeout=120, cwd=Path(__file__).resolve().parents[2])
    assert run.returncode == 0 and run.stdout.strip() == '"opened"', run.stderr[-2000:]
    started = cloudflared_stand_in.notes(fake_cloudflared)[0]
    assert not cloudflared_stand_in.alive(started["pid"])


@pytest.mark.parametrize("mode, words", [
    ("refused", r"cloudflared stopped \(exit code 1\) before the tunnel opened; its last line: failed to request "
                r"quick Tunnel: .*connection refused\. Is this machine online\?"),
    ("noedge", r"no working URL within 2 s \(its address https://\S+\.trycloudflare\.com never connected; its last "
               r"line: .* ERR Failed to dial a quic connection"),
    ("silent", r"no working URL within 2 s \(it printed no address; its last line: .*Requesting new quick Tunnel"),
])
def test_cloudflared_failures_say_what_happened(fake_cloudflared, monkeypatch, mode, words):
    monkeypatch.setenv("FAKE_CLOUDFLARED", mode)
    with pytest.raises(TunnelError, match=words) as info:
        open_cloudflared(5123, timeout=2)
    assert "\n" not in str(info.value) and "--tunnel ngrok" in str(info.value)
    started = cloudflared_stand_in.notes(fake_cloudflared)[0]
    assert not cloudflared_stand_in.alive(started["pid"])  # a stuck cloudflared is stopped, not left behind


@pytest.fixture
def empty_cloudflared(tmp_path, monkeypatch, http_server):
    """pycloudflared without its program yet: it downloads it on first use, from the local server."""
    import importlib
    import sys

    from pycloudflared.util import get_info

    name = get_info().executable.rsplit("/", 1)[-1]
    url = http_server.url(f"/cloudflare/cloudflared/releases/latest/download/{name}")
    site = cloudflared_stand_in.install(tmp_path / "empty", program=False, download_url=url)
    monkeypatch.syspath_prepend(str(site))
    for module in [m for m in sys.modules if m.split(".")[0] == "pycloudflared"]:
        monkeypatch.delitem(sys.modules, module)
    importlib.invalidate_caches()
    monkeypatch.setenv("FAKE_CLOUDFLARED_LOG", str(tmp_path / "cloudflared.log"))
    yield http_server, url
    for module in [m for m in sys.modules if m.split(".")[0] == "pycloudflared"]:
        sys.modules.pop(module, None)


def test_cloudflared_is_downloaded_once_by_pycloudflared(empty_cloudflared, local_service, tmp_path):
    server, url = empty_cloudflared
    server.serve(url.split(str(server.port), 1)[1], cloudflared_stand_in.stand_in_program().encode())
    assert not cloudflared_path().exists()
    tunnel = open_cloudflared(local_service)
    assert cloudflared_path().is_file() and server.count() == 1  # pycloudflared downloaded it into its folder
    tunnel.close()
    open_cloudflared(local_service).close()
    assert server.count() == 1  # and uses it from there next time


def test_cloudflared_that_cannot_be_downloaded_says_so(empty_cloudflared):
    server, url = empty_cloudflared  # nothing served there: 404
    with pytest.raises(TunnelError, match=r"the cloudflared program cannot be downloaded \(HTTP Error 404.*"
                                          r"connect to the internet, or put cloudflared .* at .*--tunnel ngrok"):
        open_cloudflared(5123)
    assert not cloudflared_path().exists()


def test_auto_opens_ngrok_with_a_token_and_cloudflared_without(fake_cloudflared, local_service, tmp_path,
                                                                monkeypatch):
    first = open_tunnel("auto", local_service, authtoken=None)
    first.close()
    assert first.kind == "cloudflared"
    binary, log = fake_ngrok_binary(tmp_path, "ok")
    monkeypatch.setenv("PYNGROK_NGROK_PATH", str(binary))
    monkeypatch.setenv("HOME", str(tmp_path))
    tunnel = open_tunnel("auto", local_service, authtoken="tok-1")
    try:
        assert tunnel.kind == "ngrok" and tunnel.public_url == "https://fake-tunnel.ngrok-free.app"
    finally:
        tunnel.close()


def test_auto_falls_back_to_cloudflared_when_ngrok_fails(fake_cloudflared, local_service, tmp_path, monkeypatch):
    binary, _ = fake_ngrok_binary(tmp_path, "108")  # another agent session of the account runs elsewhere
    monkeypatch.setenv("PYNGROK_NGROK_PATH", str(binary))
    monkeypatch.setenv("HOME", str(tmp_path))
    tunnel = open_tunnel("auto", local_service, authtoken="tok-1")
    assert tunnel.kind == "cloudflared"
    tunnel.close()
    monkeypatch.setenv("FAKE_CLOUDFLARED", "refused")
    with pytest.raises(TunnelError, match=r"^ngrok: .*ERR_NGROK_108.*; cloudflared: cloudflared stopped"):
        open_tunnel("auto", local_service, authtoken="tok-1")
