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
