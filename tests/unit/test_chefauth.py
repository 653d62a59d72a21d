"""Chef signed-header authentication: published mixlib-authentication vectors and the
server-side error contract (server-protocol.md 6.1)."""

from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from appliance.core import chefauth, keys, rsaraw
from appliance.core.chefauth import AuthError
from tests.unit.vectors import SPEC_PRIVATE_KEY_PEM

# --- Published vectors: chef/mixlib-authentication,
# spec/mixlib/authentication/mixlib_authentication_spec.rb (Apache-2.0 test data).


SPEC_PUBLIC_KEY_PEM = """\
-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA0ueqo76MXuP6XqZBILFz
iH/9AI7C6PaN5W0dSvkr9yInyGHSz/IR1+4tqvP2qlfKVKI4CP6BFH251Ft9qMUB
uAsnlAVQ1z0exDtIFFOyQCdR7iXmjBIWMSS4buBwRQXwDK7id1OxtU23qVJv+xwE
V0IzaaSJmaGLIbvRBD+qatfUuQJBMU/04DdJIwvLtZBYdC2219m5dUBQaa4bimL+
YN9EcsDzD9h9UxQo5ReK7b3cNMzJBKJWLzFBcJuePMzAnLFktr/RufX4wpXe6XJx
oVPaHo72GorLkwnQ0HYMTY8rehT4mDi1FI969LHCFFaFHSAaRnwdXaQkJmSfcxzC
YQIDAQAB
-----END PUBLIC KEY-----
"""

USER_ID = "spec-user"
BODY = b"Spec Body"
TIMESTAMP = "2009-01-01T12:00:00Z"
TIMESTAMP_EPOCH = 1230811200.0
PATH = "/organizations/clownco"
HASHED_BODY = "DFteJZPVv6WKdQmMqZUQUumUyRs="
HASHED_BODY_SHA256 = "hDlKNZhIhgso3Fs0S0pZwJ0xyBWtR1RBaeHs1DrzOho="
HASHED_CANONICAL_PATH = "YtBWDn1blGGuFIuKksdwXzHU9oE="

LINES = {
    "1.0": [
        "jVHrNniWzpbez/eGWjFnO6lINRIuKOg40ZTIQudcFe47Z9e/HvrszfVXlKG4",
        "NMzYZgyooSvU85qkIUmKuCqgG2AIlvYa2Q/2ctrMhoaHhLOCWWoqYNMaEqPc",
        "3tKHE+CfvP+WuPdWk4jv4wpIkAz6ZLxToxcGhXmZbXpk56YTmqgBW2cbbw4O",
        "IWPZDHSiPcw//AYNgW1CCDptt+UFuaFYbtqZegcBd2n/jzcWODA7zL4KWEUy",
        "9q4rlh/+1tBReg60QdsmDRsw/cdO1GZrKtuCwbuD4+nbRdVBKv72rqHX9cu0",
        "utju9jzczCyB+sSAQWrxSsXB/b8vV2qs0l4VD2ML+w==",
    ],
    "1.1": [
        "UfZD9dRz6rFu6LbP5Mo1oNHcWYxpNIcUfFCffJS1FQa0GtfU/vkt3/O5HuCM",
        "1wIFl/U0f5faH9EWpXWY5NwKR031Myxcabw4t4ZLO69CIh/3qx1XnjcZvt2w",
        "c2R9bx/43IWA/r8w8Q6decuu0f6ZlNheJeJhaYPI8piX/aH+uHBH8zTACZu8",
        "vMnl5MF3/OIlsZc8cemq6eKYstp8a8KYq9OmkB5IXIX6qVMJHA6fRvQEB/7j",
        "281Q7oI/O+lE8AmVyBbwruPb7Mp6s4839eYiOdjbDwFjYtbS3XgAjrHlaD7W",
        "FDlbAG7H8Dmvo+wBxmtNkszhzbBnEYtuwQqT8nM/8A==",
    ],
    "1.3": [
        "FZOmXAyOBAZQV/uw188iBljBJXOm+m8xQ/8KTGLkgGwZNcRFxk1m953XjE3W",
        "VGy1dFT76KeaNWmPCNtDmprfH2na5UZFtfLIKrPv7xm80V+lzEzTd9WBwsfP",
        "42dZ9N+V9I5SVfcL/lWrrlpdybfceJC5jOcP5tzfJXWUITwb6Z3Erg3DU3Uh",
        "H9h9E0qWlYGqmiNCVrBnpe6Si1gU/Jl+rXlRSNbLJ4GlArAPuL976iTYJTzE",
        "MmbLUIm3JRYi00Yb01IUCCKdI90vUq1HHNtlTEu93YZfQaJwRxXlGkCNwIJe",
        "fy49QzaCIEu1XiOx5Jn+4GmkrZch/RrK9VzQWXgs+w==",
    ],
}
SIGN_VALUE = {
    "1.0": "algorithm=sha1;version=1.0;",
    "1.1": "algorithm=sha1;version=1.1;",
    "1.3": "algorithm=sha256;version=1.3;",
}
CONTENT_HASH = {"1.0": HASHED_BODY, "1.1": HASHED_BODY, "1.3": HASHED_BODY_SHA256}

# Base64.encode64(Digest::SHA1.digest("spec-user")).chomp, computed independently here.
DIGESTED_USER_ID = base64.b64encode(hashlib.sha1(b"spec-user").digest()).decode()

CANONICAL = {
    "1.0": (
        "Method:POST\n"
        f"Hashed Path:{HASHED_CANONICAL_PATH}\n"
        f"X-Ops-Content-Hash:{HASHED_BODY}\n"
        f"X-Ops-Timestamp:{TIMESTAMP}\n"
        f"X-Ops-UserId:{USER_ID}"
    ),
    "1.1": (
        "Method:POST\n"
        f"Hashed Path:{HASHED_CANONICAL_PATH}\n"
        f"X-Ops-Content-Hash:{HASHED_BODY}\n"
        f"X-Ops-Timestamp:{TIMESTAMP}\n"
        f"X-Ops-UserId:{DIGESTED_USER_ID}"
    ),
    "1.3": (
        "Method:POST\n"
        f"Path:{PATH}\n"
        f"X-Ops-Content-Hash:{HASHED_BODY_SHA256}\n"
        "X-Ops-Sign:version=1.3\n"
        f"X-Ops-Timestamp:{TIMESTAMP}\n"
        f"X-Ops-UserId:{USER_ID}\n"
        "X-Ops-Server-API-Version:1"
    ),
}
API_VERSION = {"1.0": None, "1.1": None, "1.3": "1"}
VERSIONS = ("1.0", "1.1", "1.3")


def expected_headers(version: str) -> dict[str, str]:
    """mixlib's EXPECTED_SIGN_RESULT_* plus the API version header it sends separately."""
    h = {
        "X-Ops-Content-Hash": CONTENT_HASH[version],
        "X-Ops-Userid": USER_ID,
        "X-Ops-Sign": SIGN_VALUE[version],
        "X-Ops-Timestamp": TIMESTAMP,
    }
    for i, line in enumerate(LINES[version], start=1):
        h[f"X-Ops-Authorization-{i}"] = line
    if API_VERSION[version] is not None:
        h["X-Ops-Server-API-Version"] = API_VERSION[version]
    return h


def published_request_headers(version: str) -> dict[str, str]:
    """The MERB_HEADERS_V1_x of the spec, as HTTP header names (1.0 sends just version=1.0)."""
    h = expected_headers(version)
    if version == "1.0":
        h["X-Ops-Sign"] = "version=1.0"
    h["Host"] = "127.0.0.1"
    h["X-Ops-RequestId"] = "127.0.0.1 1258566194.85386"
    return h


@pytest.fixture(scope="module")
def spec_key():
    return keys.load_private_pem(SPEC_PRIVATE_KEY_PEM)


@pytest.fixture(scope="module")
def spec_pub():
    return keys.load_public_pem(SPEC_PUBLIC_KEY_PEM)


@pytest.fixture(scope="module")
def other_key():
    return keys.generate_rsa(2048)


@pytest.fixture(scope="module")
def big_key():
    return keys.generate_rsa(4096)


def authenticate(headers, pubs, *, method="POST", path=PATH, body=BODY, now=TIMESTAMP_EPOCH):
    req = chefauth.parse_auth_headers(headers, method, path, body)
    chefauth.check_time(req, now)
    return chefauth.verify_signature(req, pubs)


# --- signing reproduces the published headers byte for byte


def test_spec_public_key_is_the_spec_private_keys_half(spec_key, spec_pub):
    assert spec_key.public_key().public_numbers() == spec_pub.public_numbers()


@pytest.mark.parametrize("version", VERSIONS)
def test_canonical_text_matches_published(version):
    text = chefauth.canonical_request(
        version=version,
        method="post",
        path=PATH,
        body_hash=CONTENT_HASH[version],
        timestamp=TIMESTAMP,
        user_id=USER_ID,
        server_api_version=API_VERSION[version],
    )
    assert text == CANONICAL[version].encode()


@pytest.mark.parametrize("version", VERSIONS)
def test_sign_matches_published_vectors(spec_key, version):
    headers = chefauth.sign_request(
        key=spec_key,
        user_id=USER_ID,
        method="post",
        path=PATH,
        body=BODY,
        timestamp=TIMESTAMP,
        version=version,
        server_api_version=API_VERSION[version],
    )
    assert headers == expected_headers(version)


def test_v10_signature_is_raw_private_encryption_of_the_canonical_text(spec_key, spec_pub):
    sig = base64.b64decode("".join(LINES["1.0"]))
    assert rsaraw.public_decrypt(spec_pub, sig) == CANONICAL["1.0"].encode()
    assert rsaraw.private_encrypt(spec_key, CANONICAL["1.0"].encode()) == sig


def test_v13_signature_is_standard_pkcs1_sha256(spec_pub):
    sig = base64.b64decode("".join(LINES["1.3"]))
    spec_pub.verify(sig, CANONICAL["1.3"].encode(), padding.PKCS1v15(), hashes.SHA256())


def test_sign_defaults_to_13_with_api_version_1(spec_key):
    headers = chefauth.sign_request(
        key=spec_key, user_id=USER_ID, method="POST", path=PATH, body=BODY, timestamp=TIMESTAMP
    )
    assert headers == expected_headers("1.3")


def test_v10_v11_send_but_do_not_sign_the_api_version(spec_key):
    headers = chefauth.sign_request(
        key=spec_key,
        user_id=USER_ID,
        method="POST",
        path=PATH,
        body=BODY,
        timestamp=TIMESTAMP,
        version="1.1",
        server_api_version="1",
    )
    assert headers == {**expected_headers("1.1"), "X-Ops-Server-API-Version": "1"}


# --- verification of the published requests


@pytest.mark.parametrize("version", VERSIONS)
def test_published_requests_verify(spec_pub, version):
    assert authenticate(published_request_headers(version), [spec_pub]) is True


@pytest.mark.parametrize("version", VERSIONS)
def test_parsed_request_fields(version):
    req = chefauth.parse_auth_headers(published_request_headers(version), "post", PATH, BODY)
    assert req.user_id == USER_ID
    assert req.version == version
    assert req.algorithm == ("sha256" if version == "1.3" else "sha1")
    assert req.method == "POST"
    assert req.path == PATH
    assert req.content_hash_ok
    assert req.canonical == CANONICAL[version].encode()
    assert len(req.signature) == 256


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(
    "path", ["//organizations//clownco/", "/organizations/clownco/", PATH + "?q=1&x=//"]
)
def test_non_canonical_path_still_verifies(spec_pub, version, path):
    assert authenticate(published_request_headers(version), [spec_pub], path=path) is True


@pytest.mark.parametrize("version", VERSIONS)
def test_tampered_body_rejected(spec_pub, version):
    assert authenticate(published_request_headers(version), [spec_pub], body=b"Spec Body!") is False


@pytest.mark.parametrize("version", VERSIONS)
def test_tampered_body_with_matching_content_hash_rejected(spec_pub, version):
    body = b"other body"
    algo = "sha256" if version == "1.3" else "sha1"
    headers = published_request_headers(version)
    headers["X-Ops-Content-Hash"] = base64.b64encode(hashlib.new(algo, body).digest()).decode()
    assert authenticate(headers, [spec_pub], body=body) is False


@pytest.mark.parametrize("version", VERSIONS)
def test_altered_content_hash_header_rejected(spec_pub, version):
    headers = published_request_headers(version)
    headers["X-Ops-Content-Hash"] += "_"
    assert authenticate(headers, [spec_pub]) is False


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("path", ["/organizations/clowncp", "/organizations/clownco/nodes", "/"])
def test_tampered_path_rejected(spec_pub, version, path):
    assert authenticate(published_request_headers(version), [spec_pub], path=path) is False


@pytest.mark.parametrize("version", VERSIONS)
def test_tampered_method_rejected(spec_pub, version):
    assert authenticate(published_request_headers(version), [spec_pub], method="PUT") is False


@pytest.mark.parametrize("version", VERSIONS)
def test_lowercase_method_is_canonicalised(spec_pub, version):
    assert authenticate(published_request_headers(version), [spec_pub], method="post") is True


@pytest.mark.parametrize("version", VERSIONS)
def test_tampered_user_rejected(spec_pub, version):
    headers = published_request_headers(version)
    headers["X-Ops-Userid"] = "spec-usee"
    assert authenticate(headers, [spec_pub]) is False


@pytest.mark.parametrize("version", VERSIONS)
def test_tampered_timestamp_rejected(spec_pub, version):
    headers = published_request_headers(version)
    headers["X-Ops-Timestamp"] = "2009-01-01T12:00:01Z"
    assert authenticate(headers, [spec_pub]) is False


@pytest.mark.parametrize("api", ["2", "0", None])
def test_v13_tampered_api_version_rejected(spec_pub, api):
    headers = published_request_headers("1.3")
    del headers["X-Ops-Server-API-Version"]
    if api is not None:
        headers["X-Ops-Server-API-Version"] = api
    assert authenticate(headers, [spec_pub]) is False


@pytest.mark.parametrize("api", ["abc", "1.0", ""])
def test_v13_non_integer_api_version_is_a_bad_signature(spec_pub, api):
    headers = published_request_headers("1.3")
    headers["X-Ops-Server-API-Version"] = api
    req = chefauth.parse_auth_headers(headers, "POST", PATH, BODY)
    assert req.canonical is None
    assert chefauth.verify_signature(req, [spec_pub]) is False


@pytest.mark.parametrize("version", ["1.0", "1.1"])
def test_v10_v11_ignore_the_api_version(spec_pub, version):
    headers = published_request_headers(version)
    headers["X-Ops-Server-API-Version"] = "7"
    assert authenticate(headers, [spec_pub]) is True


def test_v13_without_api_version_signs_and_verifies_as_zero(spec_key, spec_pub):
    headers = chefauth.sign_request(
        key=spec_key,
        user_id=USER_ID,
        method="GET",
        path=PATH,
        body=b"",
        timestamp=TIMESTAMP,
        server_api_version=None,
    )
    assert "X-Ops-Server-API-Version" not in headers
    req = chefauth.parse_auth_headers(headers, "GET", PATH, b"")
    assert req.canonical.endswith(b"\nX-Ops-Server-API-Version:0")
    assert chefauth.verify_signature(req, [spec_pub]) is True
    assert authenticate(
        {**headers, "X-Ops-Server-API-Version": "0"}, [spec_pub], method="GET", body=b""
    )
    assert not authenticate(
        {**headers, "X-Ops-Server-API-Version": "1"}, [spec_pub], method="GET", body=b""
    )


@pytest.mark.parametrize("version", VERSIONS)
def test_wrong_key_rejected_and_key_list_tried_in_turn(spec_pub, other_key, version):
    headers = published_request_headers(version)
    other_pub = other_key.public_key()
    assert authenticate(headers, [other_pub]) is False
    assert authenticate(headers, []) is False
    assert authenticate(headers, [other_pub, spec_pub]) is True
    assert authenticate(headers, iter([other_pub, spec_pub])) is True


@pytest.mark.parametrize("version", VERSIONS)
def test_mangled_signature_rejected(spec_pub, version):
    headers = published_request_headers(version)
    headers["X-Ops-Authorization-1"] = "epicfail"
    assert authenticate(headers, [spec_pub]) is False


@pytest.mark.parametrize("version", VERSIONS)
def test_missing_authorization_headers_parse_but_do_not_verify(spec_pub, version):
    headers = {
        k: v for k, v in published_request_headers(version).items() if "Authorization" not in k
    }
    req = chefauth.parse_auth_headers(headers, "POST", PATH, BODY)
    assert req.signature == b""
    assert chefauth.verify_signature(req, [spec_pub]) is False


def test_missing_middle_authorization_line_truncates_signature(spec_pub):
    headers = published_request_headers("1.1")
    del headers["X-Ops-Authorization-3"]
    req = chefauth.parse_auth_headers(headers, "POST", PATH, BODY)
    assert req.signature == base64.b64decode("".join(LINES["1.1"][:2]))
    assert chefauth.verify_signature(req, [spec_pub]) is False


def test_version_mismatch_between_signature_and_header_rejected(spec_pub):
    headers = published_request_headers("1.1")
    headers["X-Ops-Sign"] = "algorithm=sha1;version=1.0;"
    assert authenticate(headers, [spec_pub]) is False
    headers["X-Ops-Sign"] = "version=1.2"
    assert authenticate(headers, [spec_pub]) is False


# --- version 1.2 (chef_authn only): RSA-SHA1 PKCS#1 v1.5 over the 1.1 text


def _v12_headers(key, body=BODY):
    body_hash = base64.b64encode(hashlib.sha1(body).digest()).decode()
    text = chefauth.canonical_request(
        version="1.2",
        method="POST",
        path=PATH,
        body_hash=body_hash,
        timestamp=TIMESTAMP,
        user_id=USER_ID,
    )
    sig = base64.b64encode(key.sign(text, padding.PKCS1v15(), hashes.SHA1())).decode()
    headers = {
        "X-Ops-Sign": "version=1.2",
        "X-Ops-Userid": USER_ID,
        "X-Ops-Timestamp": TIMESTAMP,
        "X-Ops-Content-Hash": body_hash,
    }
    for i in range(0, len(sig), 60):
        headers[f"X-Ops-Authorization-{i // 60 + 1}"] = sig[i : i + 60]
    return headers, text


def test_v12_canonical_text_hashes_the_user_id(spec_key):
    _, text = _v12_headers(spec_key)
    assert text == CANONICAL["1.1"].encode()


def test_v12_verifies_and_rejects_tampering(spec_key, spec_pub):
    headers, _ = _v12_headers(spec_key)
    assert authenticate(headers, [spec_pub]) is True
    assert authenticate({**headers, "X-Ops-Sign": "algorithm=sha1;version=1.2"}, [spec_pub])
    assert authenticate(headers, [spec_pub], body=b"x") is False
    assert authenticate(headers, [spec_pub], path="/organizations/other") is False
    # The same bytes presented as 1.1 (raw private encryption) do not verify.
    assert authenticate({**headers, "X-Ops-Sign": "version=1.1"}, [spec_pub]) is False


def test_sign_refuses_12_and_unknown_versions(spec_key):
    for version in ("1.2", "1.4", "2.0", ""):
        with pytest.raises(ValueError):
            chefauth.sign_request(
                key=spec_key,
                user_id=USER_ID,
                method="GET",
                path=PATH,
                body=b"",
                timestamp=TIMESTAMP,
                version=version,
            )


# --- long user ids: why 1.1 exists


def test_v10_chokes_on_a_long_user_id_but_v11_and_v13_do_not(spec_key, spec_pub):
    args = dict(
        key=spec_key,
        user_id="A" * 200,
        method="PUT",
        path=PATH + "/nodes/" + "A" * 250,
        body=BODY,
        timestamp=TIMESTAMP,
    )
    with pytest.raises(ValueError):
        chefauth.sign_request(**args, version="1.0")
    for version in ("1.1", "1.3"):
        headers = chefauth.sign_request(**args, version=version)
        assert authenticate(headers, [spec_pub], method="PUT", path=args["path"]) is True


# --- header errors (server-protocol.md 6.1)

REQUIRED = ["X-Ops-UserId", "X-Ops-Timestamp", "X-Ops-Sign", "X-Ops-Content-Hash"]


@pytest.mark.parametrize(
    "drop",
    [
        REQUIRED,
        ["X-Ops-UserId"],
        ["X-Ops-Timestamp"],
        ["X-Ops-Sign"],
        ["X-Ops-Content-Hash"],
        ["X-Ops-Content-Hash", "X-Ops-Timestamp"],
        ["X-Ops-Sign", "X-Ops-UserId"],
    ],
)
def test_missing_headers_400_names_them_in_order(drop):
    headers = {
        k: v
        for k, v in published_request_headers("1.3").items()
        if k.lower() not in {d.lower() for d in drop}
    }
    with pytest.raises(AuthError) as info:
        chefauth.parse_auth_headers(headers, "POST", PATH, BODY)
    in_order = [name for name in REQUIRED if name in drop]
    expected = "missing required authentication header(s) " + ", ".join(
        f"'{name}'" for name in in_order
    )
    assert info.value.status == 400
    assert info.value.message == expected
    assert str(info.value) == expected


def test_missing_all_headers_exact_message():
    with pytest.raises(AuthError) as info:
        chefauth.parse_auth_headers({}, "GET", "/", b"")
    assert info.value.message == (
        "missing required authentication header(s) 'X-Ops-UserId', 'X-Ops-Timestamp', "
        "'X-Ops-Sign', 'X-Ops-Content-Hash'"
    )


@pytest.mark.parametrize(
    "value",
    [
        "",
        "garbage",
        "algorithm=sha1",
        "version=1.4",
        "version=2.0",
        "version=",
        "algorithm=sha256;version=1.0",
        "algorithm=sha256;version=1.1;",
        "algorithm=sha1;version=1.3;",
        "algorithm=md5;version=1.2",
        "algorithm=SHA1;version=1.1",
        "Version=1.1",
    ],
)
def test_unsupported_sign_description_400(value):
    headers = {**published_request_headers("1.1"), "X-Ops-Sign": value}
    with pytest.raises(AuthError) as info:
        chefauth.parse_auth_headers(headers, "POST", PATH, BODY)
    assert (info.value.status, info.value.message) == (
        400,
        "Unsupported authentication protocol version",
    )


@pytest.mark.parametrize(
    ("value", "version", "algorithm"),
    [
        ("version=1.0", "1.0", "sha1"),
        ("algorithm=sha1;version=1.0;", "1.0", "sha1"),
        ("version=1.1;algorithm=sha1", "1.1", "sha1"),
        (";;version=1.1;;junk;", "1.1", "sha1"),
        ("version=1.2", "1.2", "sha1"),
        ("version=1.3", "1.3", "sha256"),
        ("algorithm=sha256; version=1.3", "1.3", "sha256"),
    ],
)
def test_sign_description_parsing(value, version, algorithm):
    headers = {**published_request_headers("1.1"), "X-Ops-Sign": value}
    req = chefauth.parse_auth_headers(headers, "POST", PATH, BODY)
    assert (req.version, req.algorithm) == (version, algorithm)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("case", [str.lower, str.upper, str.swapcase])
def test_header_names_are_case_insensitive(spec_pub, version, case):
    headers = {case(k): v for k, v in published_request_headers(version).items()}
    assert authenticate(headers, [spec_pub]) is True


# --- clock


def _req(timestamp=TIMESTAMP):
    headers = {**published_request_headers("1.3"), "X-Ops-Timestamp": timestamp}
    return chefauth.parse_auth_headers(headers, "POST", PATH, BODY)


@pytest.mark.parametrize("delta", [0, 1, 899, -899, 899.9, -899.0])
def test_time_within_skew_accepted(delta):
    chefauth.check_time(_req(), TIMESTAMP_EPOCH + delta)


@pytest.mark.parametrize("delta", [900, -900, 900.5, 1000, -1000, -899.5, 86400 * 365])
def test_time_outside_skew_401(delta):
    with pytest.raises(AuthError) as info:
        chefauth.check_time(_req(), TIMESTAMP_EPOCH + delta)
    assert info.value.status == 401
    assert info.value.message == (
        "Failed to authenticate as spec-user. Synchronize the clock on your host."
    )


def test_custom_skew():
    chefauth.check_time(_req(), TIMESTAMP_EPOCH + 299, skew=300)
    with pytest.raises(AuthError):
        chefauth.check_time(_req(), TIMESTAMP_EPOCH + 300, skew=300)


@pytest.mark.parametrize(
    "timestamp",
    [
        "",
        "2009-01-01 12:00:00Z",
        "2009-01-01T12:00:00",
        "2009-01-01T12:00:00+00:00",
        "2009-01-01T12:00:00.000Z",
        "2009-1-01T12:00:00Z",
        "2009-13-01T12:00:00Z",
        "2009-02-30T12:00:00Z",
        "2009-01-01T24:00:00Z",
        "Thu, 01 Jan 2009 12:00:00 GMT",
        "1230811200",
        " 2009-01-01T12:00:00Z",
        "２００９-01-01T12:00:00Z",
    ],
)
def test_unparsable_timestamp_401(timestamp):
    with pytest.raises(AuthError) as info:
        chefauth.check_time(_req(timestamp), TIMESTAMP_EPOCH)
    assert (info.value.status, info.value.message) == (401, "bad header(s) 'X-Ops-Timestamp'")


def test_parse_with_now_checks_clock_before_sign_description():
    headers = {
        **published_request_headers("1.1"),
        "X-Ops-Sign": "version=9.9",
        "X-Ops-Timestamp": "2001-01-01T00:00:00Z",
    }
    with pytest.raises(AuthError) as info:
        chefauth.parse_auth_headers(headers, "POST", PATH, BODY, now=TIMESTAMP_EPOCH)
    assert info.value.status == 401
    with pytest.raises(AuthError) as info:
        chefauth.parse_auth_headers(headers, "POST", PATH, BODY)
    assert info.value.status == 400
    del headers["X-Ops-Content-Hash"]
    with pytest.raises(AuthError) as info:
        chefauth.parse_auth_headers(headers, "POST", PATH, BODY, now=TIMESTAMP_EPOCH)
    assert info.value.status == 400
    assert "'X-Ops-Content-Hash'" in info.value.message


def test_parse_with_now_passes_good_clock(spec_pub):
    req = chefauth.parse_auth_headers(
        published_request_headers("1.3"), "POST", PATH, BODY, now=TIMESTAMP_EPOCH + 10
    )
    assert chefauth.verify_signature(req, [spec_pub])


def test_format_and_parse_timestamp():
    assert chefauth.format_timestamp(TIMESTAMP_EPOCH) == TIMESTAMP
    assert chefauth.format_timestamp(TIMESTAMP_EPOCH + 0.999) == TIMESTAMP
    assert chefauth.format_timestamp(0) == "1970-01-01T00:00:00Z"
    assert chefauth.parse_timestamp(TIMESTAMP) == TIMESTAMP_EPOCH
    assert chefauth.parse_timestamp("2012-09-04T23:01:02Z") == 1346799662.0


def test_sign_rejects_non_strict_timestamp(spec_key):
    with pytest.raises(ValueError):
        chefauth.sign_request(
            key=spec_key,
            user_id=USER_ID,
            method="GET",
            path=PATH,
            body=b"",
            timestamp="Thu, 01 Jan 2009 12:00:00 GMT",
        )


# --- canonical path


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("/", "/"),
        ("", "/"),
        ("//", "/"),
        ("///", "/"),
        ("/?a=b", "/"),
        ("/organizations/clownco", "/organizations/clownco"),
        ("/organizations/clownco/", "/organizations/clownco"),
        ("//organizations//clownco/", "/organizations/clownco"),
        ("/organizations///clownco//", "/organizations/clownco"),
        ("/organizations/clownco?x=1/", "/organizations/clownco"),
        ("/a/b?c=//d?e", "/a/b"),
    ],
)
def test_canonical_path(raw, canonical):
    assert chefauth.canonical_path(raw) == canonical


# --- 4096-bit keys: 12 authorization lines, ordered numerically


@pytest.mark.parametrize("version", ["1.0", "1.3"])
def test_4096_bit_key_twelve_lines_in_numeric_order(big_key, version):
    headers = chefauth.sign_request(
        key=big_key,
        user_id="big-user",
        method="GET",
        path="/organizations/o/pushy/jobs",
        body=b"",
        timestamp=TIMESTAMP,
        version=version,
    )
    names = [k for k in headers if k.startswith("X-Ops-Authorization-")]
    assert names == [f"X-Ops-Authorization-{i}" for i in range(1, 13)]
    assert all(len(headers[n]) == 60 for n in names[:-1])
    # Insert them sorted as strings (1, 10, 11, 12, 2, ...), as mixlib would order them.
    scrambled = {k: v for k, v in headers.items() if k not in names}
    for name in sorted(names):
        scrambled[name] = headers[name]
    # A stray line after a gap is not part of the signature.
    scrambled["X-Ops-Authorization-14"] = "AAAA"
    req = chefauth.parse_auth_headers(scrambled, "GET", "/organizations/o/pushy/jobs", b"")
    assert len(req.signature) == 512
    assert chefauth.verify_signature(req, [big_key.public_key()]) is True
    assert chefauth.verify_signature(req, [keys.load_public_pem(SPEC_PUBLIC_KEY_PEM)]) is False


def test_auth_error_repr():
    err = AuthError(400, "x")
    assert (err.status, err.message, str(err)) == (400, "x", "x")
    assert repr(err) == "AuthError(400, 'x')"


@pytest.mark.parametrize("api", ["01", "+1", "001"])
def test_v13_api_version_read_as_integer_like_chef_authn(spec_pub, api):
    # chef_authn parses the header with binary_to_integer and prints it back with ~B.
    headers = {**published_request_headers("1.3"), "X-Ops-Server-API-Version": api}
    assert authenticate(headers, [spec_pub]) is True
