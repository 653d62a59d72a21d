"""A generated client config is read back by our parser exactly as written."""

from __future__ import annotations

from appliance.client.bootstrap import client_config_text
from appliance.client.config import load_config, parse_ruby_config
from appliance.client.whitelist import resolve


def test_generated_config_parses_back(tmp_path):
    whitelist = {
        "hello": 'echo "hello from $CHEF_PUSH_NODE_NAME"; uname -sr',
        "chef-client": "chef-client",
        "odd #{x}\\ \n": "printf '%s\\n' done",
    }
    text = client_config_text(
        chef_server_url="http://127.0.0.1:10003/organizations/demo",
        node_name="node1",
        client_key="/etc/pushy/node1.pem",
        whitelist=whitelist,
        file_dir="/tmp/x",
    )
    raw = parse_ruby_config(text, "generated.rb")
    assert raw["chef_server_url"] == "http://127.0.0.1:10003/organizations/demo"
    assert raw["node_name"] == "node1" and raw["file_dir"] == "/tmp/x"
    assert raw["allow_unencrypted"] is False
    path = tmp_path / "push-jobs-client.rb"
    path.write_text(text)
    config = load_config(str(path), {})
    for command, line in whitelist.items():
        assert resolve(config.whitelist, command).command_line == line


def test_write_node_dir_makes_a_private_key_and_a_config_the_client_reads(tmp_path):
    import stat

    from appliance.client.bootstrap import write_node_dir

    path = write_node_dir(
        tmp_path,
        "n1",
        chef_server_url="http://127.0.0.1:1/organizations/o",
        key_pem="PEM\n",
        whitelist={"hello": "echo hi"},
    )
    node_dir = tmp_path / "n1"
    assert path == node_dir / "push-jobs-client.rb"
    assert stat.S_IMODE(node_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((node_dir / "client.pem").stat().st_mode) == 0o600
    assert (node_dir / "client.pem").read_text() == "PEM\n"
    config = load_config(str(path), {})
    assert config.node_name == "n1" and config.client_key == str(node_dir / "client.pem")
    assert config.file_dir == str(node_dir / "files")


def test_node_search_settings_are_written_for_the_client_to_read():
    from appliance.client.config import parse_config

    text = client_config_text(
        chef_server_url="http://127.0.0.1:10003/organizations/demo",
        node_name="web1",
        client_key="/etc/chef/client.pem",
        whitelist={"hello": "echo hi"},
        environment="prod",
        roles=["web", "db"],
        tags=["canary"],
    )
    config = parse_config(text, "push-jobs-client.rb")
    assert config.chef_environment == "prod"
    assert config.roles == ("web", "db") and config.tags == ("canary",)
    plain = client_config_text(
        chef_server_url="http://127.0.0.1:10003/organizations/demo",
        node_name="web1",
        client_key="/etc/chef/client.pem",
        whitelist={"hello": "echo hi"},
    )
    assert "environment" not in plain and "roles" not in plain
    assert parse_config(plain, "push-jobs-client.rb").chef_environment == "_default"
