#!/bin/sh
# Provisions an LB node of the lab: builds and installs lb-agent with its
# systemd unit (`cargo xtask install`), writes the node's config (the
# namespace lab's services and VRRP settings, with this node's interfaces,
# address and priority), checks it, and starts the agent.
#
# Environment:
#   LB_NODE             lb1 or lb2 (names the config)
#   LB_SOURCE           the source tree (default: this script's ../..)
#   LB_PUBLIC_IF, LB_PRIVATE_IF, LB_PRIVATE_ADDRESS, LB_PRIORITY, LB_PEER
#   LB_VIP              the service VIP (10.100.0.100)
#   LB_BACKENDS         backend addresses (10.200.0.21 10.200.0.22)
#   LB_DESTDIR          install under this root instead of / (tests)
#   LB_AGENT_BIN        install this binary instead of building (tests)
#   LB_NO_SERVICE=1     do not enable/start the systemd unit (tests)
set -eu

node="${LB_NODE:?set LB_NODE (lb1 or lb2)}"
here="$(cd "$(dirname "$0")" && pwd)"
source_dir="${LB_SOURCE:-$here/../..}"
public_if="${LB_PUBLIC_IF:?set LB_PUBLIC_IF}"
private_if="${LB_PRIVATE_IF:?set LB_PRIVATE_IF}"
private_address="${LB_PRIVATE_ADDRESS:?set LB_PRIVATE_ADDRESS}"
priority="${LB_PRIORITY:?set LB_PRIORITY}"
peer="${LB_PEER:?set LB_PEER}"
vip="${LB_VIP:-10.100.0.100}"
backends="${LB_BACKENDS:-10.200.0.21 10.200.0.22}"
destdir="${LB_DESTDIR:-/}"
destdir="${destdir%/}"

say() { echo "lb.sh ($node): $*"; }

if [ -n "${LB_AGENT_BIN:-}" ]; then
    agent_arg="--agent-bin $LB_AGENT_BIN"
else
    agent_arg=""
    if ! command -v cargo >/dev/null 2>&1; then
        say "installing cargo (Debian's cargo-web) to build the agent"
        DEBIAN_FRONTEND=noninteractive apt-get update -q
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q cargo-web
    fi
fi

say "installing lb-agent, its unit and the example config (cargo xtask install)"
# shellcheck disable=SC2086
(cd "$source_dir" && cargo xtask install --destdir "${destdir:-/}" $agent_arg)

config="$destdir/etc/lb-agent/lb-agent.toml"
backend_args=""
for b in $backends; do
    backend_args="$backend_args --backend $b"
done
# The config is built from the agent's configuration model (xtask), not
# written by hand here, so it cannot fall behind the schema.
# shellcheck disable=SC2086
(cd "$source_dir" && cargo xtask vagrant-config \
    --public-interface "$public_if" --private-interface "$private_if" \
    --private-address "$private_address" --priority "$priority" --peer "$peer" \
    --vip "$vip" $backend_args --xdp-mode "${LB_XDP_MODE:-auto}" \
    --state-dir "$destdir/var/lib/lb-agent") > "$config.new"
mv "$config.new" "$config"
chmod 600 "$config"
say "config written to $config"

"$destdir/usr/local/bin/lb-agent" check-config --config "$config" ${LB_CHECK_OFFLINE:+--offline}

if [ "${LB_NO_SERVICE:-0}" != 1 ]; then
    systemctl daemon-reload
    systemctl enable --now lb-agent
    say "lb-agent running: $(systemctl is-active lb-agent)"
fi
