# Example /etc/chef/push-jobs-client.rb for pushy-client, in the format the push-jobs
# cookbook writes (the original client's file works unchanged). `pushy admin node-bootstrap
# NODE --output-dir DIR` writes one for a node, with its key. The client looks for
# /etc/chef/chef-push-client.rb, /etc/chef/push-jobs-client.rb, /etc/chef/client.rb in that
# order (or takes -c FILE). The file is parsed, never evaluated.

# The push jobs server's API, with the node's organization.
chef_server_url "https://push.example.com:10003/organizations/acme"
node_name "web1"
# The node's client key (its Chef client key); keep it mode 0600.
client_key "/etc/chef/client.pem"
# Never talk to a server that offers no CURVE encryption (only Push Jobs 1.x servers do).
allow_unencrypted false
# Where jobs sent with a file (knife job start --file) get it.
file_dir "/tmp/chef-push"
# The commands this node accepts: job name => command line (/bin/sh -c). Regex keys must match
# the whole command; a hash value can lock the job (no two at once) and name the command line.
whitelist({"chef-client"=>"chef-client",
           /^restart (\w+)$/=>"systemctl restart \\1",
           "deploy"=>{:lock=>true, :command_line=>"/usr/local/bin/deploy"}})
# For node search (pushy job start CMD -s 'role:web AND chef_environment:prod'): the node's
# Chef environment, and pushy's own roles and tags (the original client ignores those two).
environment "prod"
roles ["web"]
tags ["canary"]
Mixlib::Log::Formatter.show_time = true
