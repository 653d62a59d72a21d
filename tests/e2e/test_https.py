"""HTTPS on the API port end to end: a server with ``api_tls_cert``/``api_tls_key`` made by
``pushy admin tls-cert``, the operator CLI and a real ``pushy client`` node trusting it (or not)
as Chef's settings say, ``pushy ssl check`` / ``pushy ssl fetch``, and a job over HTTPS.

The certificate names ``localhost`` only, so ``https://localhost:PORT`` is the right name and
``https://127.0.0.1:PORT`` the wrong one. Each CLI test has its own HOME (its own
``~/.chef/trusted_certs``), so the tests do not depend on their order.
"""

from __future__ import annotations

import os
import shutil
import signal
import ssl
import stat
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from appliance.knife.session import Api, Credentials
from appliance.knife.tlscert import self_signed
from appliance.tlstrust import EXIT_UNTRUSTED, TlsOptions
from tests.e2e.helpers import feed_path
from tests.support import ClientFleet, Server, wait_for

ORG = "tlsorg"
WHITELIST = "{'ok'=>'echo hello over tls', 'slow'=>'sleep 1; echo slow done'}"


def pushy(*args: str, home: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, "HOME": str(home)}
    for name in ("KNIFE_HOME", "PUSHY_SERVER_URL", "PUSHY_KEY", "PUSHY_USER", "CHEF_PROFILE"):
        env.pop(name, None)
    return subprocess.run(
        [sys.executable, "-m", "appliance", *args],
        capture_output=True,
        text=True,
        cwd=home,
        timeout=timeout,
        env=env,
    )


def make_cert(out: Path, *names: str, force: bool = False) -> subprocess.CompletedProcess:
    out.mkdir(parents=True, exist_ok=True)
    flags = [f"--name={n}" for n in names] + (["--force"] if force else [])
    return pushy("admin", "tls-cert", *flags, "--out-dir", str(out), home=out)


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    work = tmp_path_factory.mktemp("https")
    made = make_cert(work / "tls", "localhost")
    assert made.returncode == 0, made.stderr
    cert, key = work / "tls" / "localhost.crt", work / "tls" / "localhost.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    server = Server(
        work / "state",
        api_tls_cert=str(cert),
        api_tls_key=str(key),
        wait_complete_time=1,
        keep_alive_time=1,
    ).start()
    # the tests' own set-up requests trust the certificate but not its name (127.0.0.1)
    verify = ssl.create_default_context(cafile=str(cert))
    verify.check_hostname = False
    server.verify = verify
    url = f"https://localhost:{server.ports['api_port']}"
    fleet = ClientFleet(server, ORG, work / "clients")
    node_certs = work / "node-trusted"
    try:
        # the node trusts the server the way an operator would set it up: ssl fetch into the
        # client's trusted_certs_dir
        fetched = pushy("ssl", "fetch", "--trusted-certs-dir", str(node_certs), url, home=work)
        assert fetched.returncode == 0, fetched.stderr
        fleet.add("n1", whitelist=WHITELIST, extra=_client_tls(url, node_certs))
        fleet.wait_available("n1")
        yield SimpleNamespace(server=server, fleet=fleet, url=url, cert=cert, key=key, work=work)
    finally:
        fleet.close()
        server.kill()


def _client_tls(url: str, trusted: Path, mode: str = ":verify_peer") -> str:
    """push-jobs-client.rb lines (after the defaults, so they win) for an HTTPS server."""
    return (
        f"chef_server_url '{url}/organizations/{ORG}'\n"
        f"trusted_certs_dir '{trusted}'\n"
        f"ssl_verify_mode {mode}\n"
    )


def cli(tls, *args: str, home: Path, url: str | None = None) -> subprocess.CompletedProcess:
    return pushy(
        *args,
        "--server-url",
        f"{url or tls.url}/organizations/{ORG}",
        "-u",
        "pivotal",
        "-k",
        str(tls.server.pivotal_key),
        home=home,
    )


def assert_clear_refusal(r: subprocess.CompletedProcess, url: str, why: str) -> None:
    assert r.returncode == EXIT_UNTRUSTED, (r.returncode, r.stdout, r.stderr)
    assert f"ERROR: the SSL certificate of {url} cannot be trusted" in r.stderr, r.stderr
    assert why in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and "SSLCertVerificationError" not in r.stderr


def test_untrusted_server_is_refused_with_a_clear_message(tls, tmp_path):
    r = cli(tls, "node", "status", home=tmp_path)
    assert_clear_refusal(r, tls.url, "self-signed")
    assert f"pushy ssl fetch --trusted-certs-dir {tmp_path}/.chef/trusted_certs" in r.stderr


def test_ssl_check_fails_fetch_stores_then_check_and_commands_work(tls, tmp_path):
    r = pushy("ssl", "check", tls.url, home=tmp_path)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Connecting to host localhost:" in r.stdout
    assert "ERROR: The SSL certificate of localhost could not be verified" in r.stderr
    assert "TO FIX THIS ERROR" in r.stderr

    r = pushy("ssl", "fetch", tls.url, home=tmp_path)
    assert r.returncode == 0, r.stderr
    stored = tmp_path / ".chef" / "trusted_certs" / "localhost.crt"
    assert "WARNING: Certificates from localhost will be fetched" in r.stderr
    assert f"Adding certificate for localhost in {stored}" in r.stdout
    assert stored.read_text() == tls.cert.read_text()

    r = pushy("ssl", "check", tls.url, home=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Successfully verified certificates from `localhost'" in r.stdout

    r = cli(tls, "node", "status", "n1", home=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "available" in r.stdout

    r = cli(tls, "watch", "--once", "-F", "json", home=tmp_path)  # the websocket, over wss
    assert r.returncode == 0, r.stderr
    assert '"n1"' in r.stdout


def test_a_job_runs_over_https_with_its_event_feed(tls, tmp_path):
    trusted = tmp_path / "trusted"
    trusted.mkdir()
    shutil.copy(tls.cert, trusted / "pushy.pem")
    r = cli(tls, "job", "start", "slow", "n1", "--stream", "--capture", home=tmp_path)
    # the CLI's trust store is ~/.chef/trusted_certs: not set up here
    assert_clear_refusal(r, tls.url, "self-signed")
    (tmp_path / ".chef").mkdir()
    (tmp_path / ".chef" / "knife.rb").write_text(
        f"chef_server_url '{tls.url}/organizations/{ORG}'\n"
        "node_name 'pivotal'\n"
        f"client_key '{tls.server.pivotal_key}'\n"
        f"trusted_certs_dir '{trusted}'\n"
    )
    r = pushy("job", "start", "slow", "n1", "--stream", "--capture", home=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "n1: slow done" in r.stdout and "Complete." in r.stdout
    # the feed itself, through the same client code (signedhttp + tlstrust) the CLI uses
    api = Api(
        Credentials(
            tls.url,
            ORG,
            "pivotal",
            tls.server.pivotal_key,
            "test",
            tls=TlsOptions(trusted_certs_dir=str(trusted)),
        )
    )
    created = api.post(api.org_path("pushy/jobs"), {"command": "ok", "nodes": ["n1"]})
    job_id = created["id"]
    assert created["uri"] == f"{tls.url}/organizations/{ORG}/pushy/jobs/{job_id}"
    with api.stream(feed_path(ORG, job_id)) as stream:
        first = next(iter(stream.chunks()))
    assert b"event: start" in first


def test_verify_none_skips_the_check_unless_verify_api_cert(tls, tmp_path):
    chef = tmp_path / ".chef"
    chef.mkdir()
    base = (
        f"chef_server_url '{tls.url}/organizations/{ORG}'\n"
        "node_name 'pivotal'\n"
        f"client_key '{tls.server.pivotal_key}'\n"
        "ssl_verify_mode :verify_none\n"
    )
    (chef / "knife.rb").write_text(base)
    r = pushy("node", "status", "n1", home=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "available" in r.stdout
    (chef / "knife.rb").write_text(base + "verify_api_cert true\n")
    r = pushy("node", "status", "n1", home=tmp_path)
    assert_clear_refusal(r, tls.url, "self-signed")


def test_a_name_the_certificate_lacks_is_reported(tls, tmp_path):
    trusted = tmp_path / ".chef" / "trusted_certs"
    trusted.mkdir(parents=True)
    shutil.copy(tls.cert, trusted / "localhost.crt")
    wrong = f"https://127.0.0.1:{tls.server.ports['api_port']}"
    r = cli(tls, "node", "status", home=tmp_path, url=wrong)
    assert_clear_refusal(r, wrong, "not for this host name")
    r = pushy("ssl", "check", wrong, home=tmp_path)
    assert r.returncode == 1
    assert "not valid for the given hostname" in r.stderr
    assert "The server's certificate belongs to 'localhost'" in r.stderr


def test_a_node_that_does_not_trust_the_server_says_why_and_recovers(tls, tmp_path):
    trusted = tmp_path / "trusted"
    node = tls.fleet.add("n2", whitelist=WHITELIST, extra=_client_tls(tls.url, trusted))

    def complained() -> bool:
        assert node.proc is not None and node.proc.poll() is None, node.log()
        return f"the SSL certificate of {tls.url} cannot be trusted" in node.log()

    wait_for(complained, 30, what="the client's certificate error")
    assert f"pushy ssl fetch --trusted-certs-dir {trusted} {tls.url}" in node.log()
    r = pushy("ssl", "fetch", "--trusted-certs-dir", str(trusted), tls.url, home=tmp_path)
    assert r.returncode == 0, r.stderr
    tls.fleet.wait_available("n2", seconds=60)  # no restart: the next retry trusts it


def test_plain_http_client_against_https_is_refused_cleanly(tls, tmp_path):
    plain = f"http://localhost:{tls.server.ports['api_port']}"
    r = cli(tls, "node", "status", home=tmp_path, url=plain)
    assert r.returncode == 100
    assert "Traceback" not in r.stderr and "cannot reach" in r.stderr
    assert f"is it an HTTPS port? Try https://localhost:{tls.server.ports['api_port']}" in (
        r.stderr
    )
    r = pushy(
        "ssl",
        "check",
        f"https://localhost:{tls.server.ports['server_heartbeat_port']}",
        home=tmp_path,
    )
    assert r.returncode == 1 and "Traceback" not in r.stderr


def test_server_refuses_a_bad_pair_at_start_with_exit_2(tmp_path):
    # every kind of bad pair: tests/unit/test_tlstrust.py; here, what the operator sees
    cert, _ = self_signed(["localhost"], [], 90)
    _, other_key = self_signed(["localhost"], [], 90)
    (tmp_path / "a.crt").write_text(cert)
    (tmp_path / "b.key").write_text(other_key)
    cases = {
        f'api_tls_cert = "{tmp_path}/a.crt"\n': "'api_tls_key' is missing",
        f'api_tls_cert = "{tmp_path}/a.crt"\napi_tls_key = "{tmp_path}/b.key"\n': (
            f"{tmp_path}/b.key is not the key of the certificate in {tmp_path}/a.crt"
        ),
    }
    for index, (text, message) in enumerate(cases.items()):
        config = tmp_path / f"s{index}.toml"
        config.write_text(f'state_dir = "{tmp_path}/state"\n' + text)
        r = pushy("server", "-c", str(config), home=tmp_path)
        assert r.returncode == 2, (text, r.stderr)
        assert f"pushy server: {config}: " in r.stderr and message in r.stderr, r.stderr
        assert "Traceback" not in r.stderr


def test_reload_serves_a_renewed_certificate(tmp_path):
    assert make_cert(tmp_path / "tls", "localhost").returncode == 0
    cert, key = tmp_path / "tls" / "localhost.crt", tmp_path / "tls" / "localhost.key"
    with Server(
        tmp_path / "state", api_tls_cert=str(cert), api_tls_key=str(key), edge_processes=0
    ) as server:
        port = server.ports["api_port"]

        def served() -> str:
            return ssl.get_server_certificate(("127.0.0.1", port), timeout=10)

        first = cert.read_text()
        assert _same(served(), first)
        assert make_cert(tmp_path / "tls", "localhost", force=True).returncode == 0
        assert cert.read_text() != first
        assert server.proc is not None
        server.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: _same(served(), cert.read_text()), 20, what="the renewed certificate")
        assert "the API certificate was loaded again" in server.log()


def _same(pem_a: str, pem_b: str) -> bool:
    return ssl.PEM_cert_to_DER_cert(pem_a) == ssl.PEM_cert_to_DER_cert(pem_b)


# Ruby's Net::HTTP set up as Chef's HTTP client sets it up for API requests (Chef::HTTP::
# BasicClient with DefaultSSLPolicy / APISSLPolicy): VERIFY_PEER unless ssl_verify_mode is
# :verify_none and verify_api_cert is false; a store with the system's default paths plus every
# *.crt / *.pem of trusted_certs_dir. What the original push client and knife would accept.
CHEF_LIKE_RUBY = r"""
require "net/http"
require "openssl"
ARGV.each do |spec|
  name, url, mode, dir, api = spec.split("|")
  uri = URI(url)
  http = Net::HTTP.new(uri.host, uri.port)
  http.use_ssl = true
  http.open_timeout = http.read_timeout = 10
  verify = (mode == "verify_peer" || api == "true")
  http.verify_mode = verify ? OpenSSL::SSL::VERIFY_PEER : OpenSSL::SSL::VERIFY_NONE
  store = OpenSSL::X509::Store.new
  store.set_default_paths
  Dir.glob(File.join(dir, "*.{crt,pem}")).each do |file|
    begin
      store.add_cert(OpenSSL::X509::Certificate.new(File.read(file)))
    rescue OpenSSL::X509::StoreError => e
      raise unless e.message =~ /cert already in hash table/
    end
  end
  http.cert_store = store
  begin
    puts "#{name} HTTP #{http.get("/pushy/_status").code}"
  rescue OpenSSL::SSL::SSLError => e
    puts "#{name} SSLError #{e.message}"
  end
end
"""


@pytest.mark.skipif(shutil.which("ruby") is None, reason="no ruby (Debian: apt-get install ruby)")
def test_ruby_openssl_as_chef_configures_it_accepts_our_tls(tls, tmp_path):
    empty, trusted = tmp_path / "empty", tmp_path / "trusted"
    empty.mkdir()
    r = pushy("ssl", "fetch", "--trusted-certs-dir", str(trusted), tls.url, home=tmp_path)
    assert r.returncode == 0, r.stderr
    wrong = f"https://127.0.0.1:{tls.server.ports['api_port']}"
    cases = [
        f"untrusted|{tls.url}|verify_peer|{empty}|false",
        f"fetched|{tls.url}|verify_peer|{trusted}|false",
        f"none|{tls.url}|verify_none|{empty}|false",
        f"api_cert|{tls.url}|verify_none|{empty}|true",
        f"wrong_name|{wrong}|verify_peer|{trusted}|false",
    ]
    ruby = subprocess.run(
        ["ruby", "-e", CHEF_LIKE_RUBY, *cases], capture_output=True, text=True, timeout=60
    )
    assert ruby.returncode == 0, ruby.stderr
    seen = dict(line.split(" ", 1) for line in ruby.stdout.splitlines())
    assert seen["fetched"] == "HTTP 200" and seen["none"] == "HTTP 200", seen
    assert "self-signed certificate" in seen["untrusted"], seen
    assert "self-signed certificate" in seen["api_cert"], seen
    assert seen["wrong_name"].startswith("SSLError") and "hostname" in seen["wrong_name"], seen
