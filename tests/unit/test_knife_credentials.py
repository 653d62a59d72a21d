"""Where the operator CLI finds its server, user and key (knife's files, read without Ruby)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.knife.credentials import (
    DEFAULT_KEY,
    DEFAULT_URL,
    find_knife_config,
    read_knife_config,
    resolve,
    split_server_url,
)
from appliance.knife.rubyconf import RubyConfigError
from appliance.knife.session import Api, CliError
from appliance.tlstrust import TlsOptions

URL = "https://chef.example/organizations/acme"


def args(**kw) -> argparse.Namespace:
    base = dict(server_url=None, org=None, user=None, key=None, profile=None, config=None)
    return argparse.Namespace(**{**base, **kw})


@pytest.fixture
def world(tmp_path):
    """A home directory and a working directory (inside a project) that know nothing yet."""
    home = tmp_path / "home"
    cwd = tmp_path / "work" / "project" / "sub"
    home.mkdir()
    cwd.mkdir(parents=True)

    class World:
        def __init__(self) -> None:
            self.home, self.cwd, self.env = home, cwd, {"HOME": str(home)}

        def write(self, path: Path, text: str) -> Path:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            return path

        def resolve(self, **kw):
            return resolve(args(**kw), env=self.env, cwd=self.cwd, home=self.home)

    return World()


def knife(url: str = URL, user: str = "alice", key: str = "/keys/alice.pem") -> str:
    return f'chef_server_url "{url}"\nnode_name "{user}"\nclient_key "{key}"\n'


def read(text: str, path: str = "/repo/.chef/knife.rb", env=None, cwd="/cwd", home="/home/u"):
    return {
        k: v[0]
        for k, v in read_knife_config(
            text, path, env=env or {"HOME": home}, cwd=Path(cwd), home=Path(home)
        ).items()
    }


# --------------------------------------------------------------------------- defaults, layers


def test_split_server_url():
    assert split_server_url("https://h:443/organizations/acme/") == ("https://h:443", "acme")
    assert split_server_url("http://h/chef/organizations/acme") == ("http://h/chef", "acme")
    assert split_server_url("http://h:10003") == ("http://h:10003", None)


def test_nothing_configured_means_the_local_appliance(world):
    creds = world.resolve()
    assert (creds.server_url, creds.org, creds.user) == (DEFAULT_URL, None, "pivotal")
    assert creds.key_path == Path(DEFAULT_KEY) and creds.key_pem is None
    assert creds.source == "defaults"


def test_flags_beat_environment_beat_config_beat_credentials(world):
    world.write(world.home / ".chef" / "knife.rb", knife("https://kn/organizations/k", "kuser"))
    world.write(
        world.home / ".chef" / "credentials",
        "[default]\nchef_server_url = 'https://cr/organizations/c'\nnode_name = 'cuser'\n"
        "client_key = '/keys/cred.pem'\n",
    )
    creds = world.resolve()
    assert (creds.server_url, creds.org, creds.user) == ("https://kn", "k", "kuser")
    assert creds.key_path == Path("/keys/alice.pem")
    assert creds.source == "~/.chef/knife.rb"

    world.env.update(PUSHY_SERVER_URL="http://env:1/organizations/e", PUSHY_USER="euser")
    creds = world.resolve()
    assert (creds.server_url, creds.org, creds.user) == ("http://env:1", "e", "euser")
    assert creds.key_path == Path("/keys/alice.pem")  # the key still from knife.rb
    assert creds.source == "PUSHY_* environment, ~/.chef/knife.rb"

    world.env.update(PUSHY_KEY="~/env.pem")
    creds = world.resolve(user="fuser", server_url="http://flag:2/organizations/f")
    assert (creds.server_url, creds.org, creds.user) == ("http://flag:2", "f", "fuser")
    assert creds.key_path == world.home / "env.pem"
    assert creds.source == "command-line flags, PUSHY_* environment"

    creds = world.resolve(key="rel/flag.pem")
    assert creds.key_path == world.cwd / "rel" / "flag.pem"


def test_credentials_fill_what_the_config_file_leaves_out(world):
    world.write(world.home / ".chef" / "config.rb", f'chef_server_url "{URL}"\n')
    world.write(
        world.home / ".chef" / "credentials",
        "[default]\nclient_name = 'bob'\nclient_key = 'bob.pem'\n",
    )
    creds = world.resolve()
    assert (creds.server_url, creds.org, creds.user) == ("https://chef.example", "acme", "bob")
    assert creds.key_path == world.home / ".chef" / "bob.pem"  # relative to ~/.chef
    assert creds.source == "~/.chef/config.rb, ~/.chef/credentials [default]"


def test_org_comes_from_the_url_unless_given(world):
    world.write(world.home / ".chef" / "knife.rb", knife())
    assert world.resolve().org == "acme"
    world.env["PUSHY_ORG"] = "envorg"
    assert world.resolve().org == "envorg"
    assert world.resolve(org="flagorg").org == "flagorg"


def test_bad_server_urls_are_refused(world):
    with pytest.raises(CliError, match="--server-url: 'ftp://x' is not a server URL"):
        world.resolve(server_url="ftp://x")
    world.write(world.home / ".chef" / "knife.rb", 'node_name "a"\nchef_server_url "chef.ex"\n')
    with pytest.raises(CliError, match=r"~/.chef/knife.rb:2: 'chef.ex' is not a server URL"):
        world.resolve()


# --------------------------------------------------------------------------- finding the file


def test_knife_search_order(world):
    knife_home = world.home / "kh"
    places = [
        knife_home / "config.rb",
        knife_home / "knife.rb",
        world.cwd / "config.rb",
        world.cwd / "knife.rb",
        world.cwd.parent / ".chef" / "config.rb",
        world.cwd.parent / ".chef" / "knife.rb",
        world.home / ".chef" / "config.rb",
        world.home / ".chef" / "knife.rb",
    ]
    env = {**world.env, "KNIFE_HOME": str(knife_home)}
    for place in places:
        world.write(place, "")
    for place in places:  # remove the winner each time: the next one wins
        assert find_knife_config(env, world.cwd, world.home) == place
        place.unlink()
    assert find_knife_config(env, world.cwd, world.home) is None


def test_the_nearest_dot_chef_directory_wins_even_without_a_config(world):
    world.write(world.cwd.parent.parent / ".chef" / "knife.rb", knife(user="far"))
    world.write(world.home / ".chef" / "knife.rb", knife(user="home"))
    assert world.resolve().user == "far"
    (world.cwd / ".chef").mkdir()  # nearer, but empty: knife stops there and falls to ~/.chef
    assert world.resolve().user == "home"


def test_explicit_config_file(world):
    world.write(world.home / ".chef" / "knife.rb", knife(user="home"))
    world.write(world.cwd / "other.rb", knife(user="other"))
    assert world.resolve(config="other.rb").user == "other"
    with pytest.raises(CliError, match="missing.rb .* does not exist"):
        world.resolve(config="missing.rb")


def test_pushy_toml_when_knife_finds_nothing(world):
    world.write(
        world.home / ".pushy" / "config.toml",
        'server_url = "http://push:10003"\norg = "acme"\nuser = "ops"\nkey = "ops.pem"\n'
        '[profiles.prod]\nserver_url = "https://prod:10003"\nkey = "~/prod.pem"\n',
    )
    creds = world.resolve()
    assert (creds.server_url, creds.org, creds.user) == ("http://push:10003", "acme", "ops")
    assert creds.key_path == world.home / ".pushy" / "ops.pem"  # relative to the file
    assert creds.source == "~/.pushy/config.toml"
    creds = world.resolve(profile="prod")
    assert (creds.server_url, creds.org, creds.user) == ("https://prod:10003", "acme", "ops")
    assert creds.key_path == world.home / "prod.pem"
    assert creds.source == "~/.pushy/config.toml [prod]"
    world.write(world.home / ".chef" / "knife.rb", knife(user="kn"))  # knife's file comes first
    assert world.resolve().user == "kn"


def test_toml_config_given_with_c(world):
    world.write(world.cwd / "p.toml", 'chef_server_url = "http://x/organizations/o"\n')
    creds = world.resolve(config="p.toml")
    assert (creds.server_url, creds.org) == ("http://x", "o")
    world.write(world.cwd / "org.toml", 'server_url = "http://x"\norg = "o2"\n')
    assert world.resolve(config="org.toml").org == "o2"
    world.env["PUSHY_SERVER_URL"] = "http://env"  # a URL without an org: the file's org stays
    assert world.resolve(config="org.toml").org == "o2"
    world.write(world.cwd / "bad.toml", 'server = "http://x"\n')
    with pytest.raises(CliError, match="unknown setting 'server'"):
        world.resolve(config="bad.toml")
    world.write(world.cwd / "both.toml", 'user = "a"\nnode_name = "b"\n')
    with pytest.raises(CliError, match="both user and node_name"):
        world.resolve(config="both.toml")


# --------------------------------------------------------------------------- credentials profiles

CREDENTIALS = """
[default]
chef_server_url = "https://dflt/organizations/d"
node_name = "dflt"
client_key = "~/.chef/dflt.pem"

[prod]
chef_server_url = "https://prod/organizations/p"
client_name = "produser"
client_key = "/abs/prod.pem"

[ctx]
chef_server_url = "https://ctx/organizations/c"
node_name = "ctxuser"
client_key = "ctx.pem"
"""


def test_profile_selection_order(world):
    world.write(world.home / ".chef" / "credentials", CREDENTIALS)
    creds = world.resolve()
    assert (creds.server_url, creds.user, creds.key_path) == (
        "https://dflt",
        "dflt",
        world.home / ".chef" / "dflt.pem",
    )
    assert creds.source == "~/.chef/credentials [default]"
    world.write(world.home / ".chef" / "context", "ctx\n")
    assert world.resolve().user == "ctxuser"
    world.env["CHEF_PROFILE"] = "default"
    assert world.resolve().user == "dflt"
    world.env["PUSHY_PROFILE"] = "prod"
    creds = world.resolve()
    assert (creds.user, creds.org, creds.key_path) == ("produser", "p", Path("/abs/prod.pem"))
    assert creds.source == "~/.chef/credentials [prod]"
    assert world.resolve(profile="ctx").user == "ctxuser"


def test_an_unknown_profile_is_an_error_listing_the_profiles(world):
    world.write(world.home / ".chef" / "credentials", CREDENTIALS)
    with pytest.raises(CliError) as caught:
        world.resolve(profile="staging")
    assert str(caught.value) == (
        "profile 'staging' (from --profile) not found in ~/.chef/credentials (ctx, default, prod)"
    )
    world.write(world.home / ".chef" / "context", "gone")
    with pytest.raises(CliError, match=r"'gone' \(from ~/.chef/context\)"):
        world.resolve()


def test_a_missing_default_profile_is_no_error(world):
    world.write(world.home / ".chef" / "credentials", "[prod]\nnode_name = 'p'\n")
    assert world.resolve().user == "pivotal"


def test_a_profile_without_a_credentials_file(world):
    with pytest.raises(CliError, match=r"~/.chef/credentials \(no such file\)"):
        world.resolve(profile="prod")
    world.env["CHEF_PROFILE"] = "prod"  # knife's choosers: ignored without a credentials file
    assert world.resolve().user == "pivotal"
    world.env["PUSHY_PROFILE"] = "prod"
    with pytest.raises(CliError, match=r"'prod' \(from PUSHY_PROFILE\)"):
        world.resolve()


def test_node_name_and_client_name_together_are_refused(world):
    world.write(world.home / ".chef" / "credentials", "[default]\nnode_name='a'\nclient_name='b'")
    with pytest.raises(CliError, match="node_name or client_name, not both"):
        world.resolve()


def test_credentials_file_from_the_environment(world):
    other = world.write(
        world.home / "elsewhere.toml", "[default]\nnode_name = 'elsewhere'\nclient_key = '/k.pem'\n"
    )
    world.env["CHEF_CREDENTIALS_FILE"] = str(other)
    assert world.resolve().user == "elsewhere"


def _pem() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ).decode()


def test_inline_pem_stays_in_memory(world):
    pem = _pem()
    world.write(
        world.home / ".chef" / "credentials",
        f"[default]\nnode_name = 'alice'\nclient_key = '''{pem}'''\n",
    )
    before = sorted(p.name for p in world.home.rglob("*"))
    creds = world.resolve()
    assert creds.key_pem == pem.strip()
    assert creds.key_path == world.home / ".chef" / "credentials"
    assert Api(creds).key.key_size == 2048
    assert sorted(p.name for p in world.home.rglob("*")) == before  # nothing written


# --------------------------------------------------------------------------- knife.rb forms


def test_literal_forms():
    text = (
        "chef_server_url 'https://a/organizations/o'\n"
        'node_name("bob")\n'
        'client_key   "/k/bob.pem"   # trailing comment\n'
    )
    assert read(text) == {
        "chef_server_url": "https://a/organizations/o",
        "node_name": "bob",
        "client_key": "/k/bob.pem",
    }


def test_the_generated_knife_rb_idiom():
    text = """# See https://docs.chef.io/workstation/config_rb/
current_dir = File.dirname(__FILE__)
log_level                :info
log_location             STDOUT
node_name                "alice"
client_key               "#{current_dir}/alice.pem"
chef_server_url          "https://api.chef.io/organizations/acme"
cookbook_path            ["#{current_dir}/../cookbooks"]
"""
    assert read(text, "/repo/.chef/config.rb") == {
        "node_name": "alice",
        "client_key": "/repo/.chef/alice.pem",
        "chef_server_url": "https://api.chef.io/organizations/acme",
    }


def test_path_and_environment_idioms():
    env = {"HOME": "/home/u", "USER": "carol", "ORG": "acme"}
    text = """
base = File.expand_path("..", __dir__)
node_name ENV["USER"]
client_key File.join(base, "keys", "#{ENV['USER']}.pem")
chef_server_url "https://chef/organizations/" + ENV.fetch('ORG')
"""
    assert read(text, "/repo/.chef/knife.rb", env=env) == {
        "node_name": "carol",
        "client_key": "/repo/keys/carol.pem",
        "chef_server_url": "https://chef/organizations/acme",
    }
    assert read('client_key File.expand_path("~/.chef/alice.pem")')["client_key"] == (
        "/home/u/.chef/alice.pem"
    )
    assert read("client_key \"#{ENV['HOME']}/.chef/a.pem\"")["client_key"] == "/home/u/.chef/a.pem"
    assert read('client_key "#{Dir.home}/.chef/a.pem"')["client_key"] == "/home/u/.chef/a.pem"
    assert read("node_name ENV['KNIFE_USER'] || 'fallback'")["node_name"] == "fallback"
    assert read("node_name Etc.getlogin", env={"USER": "dave"})["node_name"] == "dave"
    assert read("client_key File.join(Dir.pwd, 'k.pem')")["client_key"] == "/cwd/k.pem"


def test_everything_else_is_ignored():
    text = """
require 'etc'
knife[:editor] = "vim"
knife[:ssh_attribute] = /don't/
cookbook_path [
  "/a",
  '/b',
]
cache_options( :path => "#{ENV['HOME']}/.chef/checksums" )
ssl_verify_mode :verify_none
versions = %w(1 2 3)
ratio = 10 % 3
notes = <<~EOS
  node_name "in a heredoc"
EOS
=begin
client_key "in a comment block"
=end
def helper(x)
  x * 2
end
knife do
  something 1
end
node_name "real"; log_level :debug
Chef::Log.info("loaded")
chef_server_url = "https://local.variable.only"
__END__
client_key "after the end"
"""
    assert read(text) == {"node_name": "real", "ssl_verify_mode": "verify_none"}


def test_a_value_that_needs_ruby_is_an_error_naming_the_line():
    with pytest.raises(RubyConfigError, match=r"^/r/knife.rb:2: cannot evaluate client_key .*`?"):
        read('x = 1\nclient_key `whoami`.strip + ".pem"\n', "/r/knife.rb")
    with pytest.raises(RubyConfigError, match=r"knife.rb:1: cannot evaluate node_name .*'who'"):
        read("node_name who", "/r/knife.rb")
    with pytest.raises(
        RubyConfigError, match=r"knife.rb:3: cannot evaluate chef_server_url .*line 1"
    ):
        read('u = Socket.gethostname\n\nchef_server_url "https://#{u}"\n', "/r/knife.rb")
    with pytest.raises(
        RubyConfigError, match=r"knife.rb:1: node_name is nil: ENV\['NOPE'\] is not set"
    ):
        read("node_name ENV['NOPE']", "/r/knife.rb")


def test_conditional_settings_are_refused_not_guessed():
    text = "if ENV['PROD']\n  chef_server_url 'https://prod'\nelse\n  chef_server_url 'https://dev'\nend\n"
    with pytest.raises(RubyConfigError, match=r"knife.rb:2: chef_server_url is set inside a block"):
        read(text, "/r/knife.rb")
    with pytest.raises(RubyConfigError, match=r"knife.rb:1: node_name is set conditionally \(if\)"):
        read("node_name 'x' if ENV['X']", "/r/knife.rb")
    with pytest.raises(RubyConfigError, match=r"knife.rb:1: node_name is set inside a block"):
        read("if true then node_name 'x' end", "/r/knife.rb")


def test_relative_client_key_in_knife_rb_is_relative_to_the_working_directory(world):
    world.write(world.home / ".chef" / "knife.rb", 'node_name "a"\nclient_key "keys/a.pem"\n')
    assert world.resolve().key_path == world.cwd / "keys" / "a.pem"


def test_knife_default_keys(world):
    world.write(world.home / ".chef" / "knife.rb", f'node_name "erin"\nchef_server_url "{URL}"\n')
    with pytest.raises(CliError, match="no key for 'erin'"):
        world.resolve()
    world.write(world.home / ".chef" / "user.pem", "")
    assert world.resolve().key_path == world.home / ".chef" / "user.pem"
    world.write(world.home / ".chef" / "erin.pem", "")
    assert world.resolve().key_path == world.home / ".chef" / "erin.pem"


def test_a_non_default_user_without_any_key_is_an_error(world):
    with pytest.raises(CliError, match="no key for 'zed': give --key or PUSHY_KEY"):
        world.resolve(user="zed")


def test_double_quoted_escapes_and_single_quoted_backslashes():
    text = "client_key \"C:\\\\chef\\\\a.pem\"\nnode_name 'it\\'s'\n"
    assert read(text) == {"client_key": "C:\\chef\\a.pem", "node_name": "it's"}


_PIECES = [
    *"abc_ =\"'#{}()[]%<>~/\\\n:;.+|&?`$@0123",
    "node_name ",
    "client_key ",
    "chef_server_url ",
    "#{",
    "<<~EOS\n",
    "EOS\n",
    "=begin\n",
    "=end\n",
    "%w(",
    "File.join(",
    "ENV['X']",
    "current_dir",
    " if ",
    "do\n",
    "end\n",
]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(_PIECES), max_size=30).map("".join))
def test_any_text_gives_values_or_a_config_error(text):
    try:
        values = read_knife_config(text, "/r/k.rb", env={"X": "x"}, cwd=Path("/c"), home=Path("/h"))
    except RubyConfigError as exc:
        assert str(exc).startswith("/r/k.rb:")
    else:
        assert set(values) <= {"chef_server_url", "node_name", "client_key"}
        assert all(isinstance(v, str) and isinstance(line, int) for v, line in values.values())


# --------------------------------------------------------------------------- Chef's SSL settings


def test_ssl_settings_from_knife_rb_with_chef_defaults(world):
    plain = world.write(world.home / ".chef" / "knife.rb", knife())
    tls = world.resolve().tls
    assert tls == TlsOptions(trusted_certs_dir=str(plain.parent / "trusted_certs"))
    project = world.write(
        world.cwd.parent / ".chef" / "knife.rb",
        knife()
        + "ssl_verify_mode :verify_none\nverify_api_cert true\n"
        + "trusted_certs_dir File.join(__dir__, 'certs')\nssl_ca_file '~/ca.pem'\n",
    )
    tls = world.resolve().tls
    assert tls.verify_mode == "verify_none" and tls.verify_api_cert is True
    assert tls.verifies  # verify_api_cert wins for API requests, as in Chef
    assert tls.trusted_certs_dir == str(project.parent / "certs")
    assert tls.ca_file == str(world.home / "ca.pem")


def test_ssl_settings_from_credentials_and_pushy_toml(world):
    world.write(
        world.home / ".chef" / "credentials",
        f'[default]\nchef_server_url = "{URL}"\nssl_verify_mode = "verify_none"\n'
        'trusted_certs_dir = "tc"\n',
    )
    tls = world.resolve().tls
    assert tls.verify_mode == "verify_none" and not tls.verifies
    assert tls.trusted_certs_dir == str(world.home / ".chef" / "tc")
    toml = world.write(
        world.home / ".pushy" / "config.toml",
        f'server_url = "{URL}"\nverify_api_cert = true\n[profiles.p]\nssl_ca_path = "/ca"\n',
    )
    assert toml.is_file()
    tls = world.resolve(config=str(toml), profile="p").tls
    assert tls.verify_api_cert is True and tls.ca_path == "/ca"
    # profile p is not in the credentials file: its trusted_certs_dir is not used
    assert tls.trusted_certs_dir == str(world.home / ".chef" / "trusted_certs")


@pytest.mark.parametrize(
    "line, message",
    [
        ("ssl_verify_mode :verify_maybe", "ssl_verify_mode must be :verify_peer or :verify_none"),
        ("verify_api_cert 'yes'", "verify_api_cert must be true or false"),
        ("trusted_certs_dir true", "trusted_certs_dir must be a non-empty string"),
        ("node_name true", "node_name must be a string"),
    ],
)
def test_bad_ssl_values_name_the_line(world, line, message):
    world.write(world.home / ".chef" / "knife.rb", knife() + line + "\n")
    with pytest.raises(CliError, match=rf"knife.rb:4: {message}"):
        world.resolve()


def test_symbols_and_booleans_are_read_as_such():
    found = read('ssl_verify_mode(:verify_peer)\nverify_api_cert false\nnode_name "#{true}"\n')
    assert found == {
        "ssl_verify_mode": "verify_peer",
        "verify_api_cert": False,
        "node_name": "true",
    }
    with pytest.raises(RubyConfigError, match="boolean"):
        read("client_key File.join(true, 'x')")
