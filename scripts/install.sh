#!/usr/bin/env bash
# Installs model-proxy as a systemd service on a Debian (or similar) host. Run as root.
#
#   scripts/install.sh [BINARY]    # default target/x86_64-unknown-linux-musl/release/model-proxy
#   scripts/install.sh --uninstall # removes the unit and the binary; keeps config and state
#
# What it does (idempotent: safe to run again, e.g. to upgrade the binary):
#   /usr/local/bin/model-proxy                 the binary (build it with scripts/build-static.sh)
#   user and group model-proxy                 a system user: no home, no login shell
#   /etc/model-proxy/                          root:model-proxy 0750
#   /etc/model-proxy/{servers,models}.json     from config/*.example.json, only if absent
#                                              (an existing config is never overwritten)
#   /etc/model-proxy/certs/zhiva.{crt,key}     a self-signed pair (scripts/make-cert.sh)
#                                              only if absent; key root:model-proxy 0640
#   /var/lib/model-proxy/                      the state directory (tokens), model-proxy 0700
#   /etc/systemd/system/model-proxy.service    the unit (config/model-proxy.service)
# then, if systemd is running: daemon-reload, enable --now (restart if the binary or
# the unit changed). Otherwise it prints what to run.
#
# Environment: MODEL_PROXY_CERT_HOST, the host name put in a generated certificate
# (default: hostname -f; localhost and 127.0.0.1 are always included).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
name=model-proxy
bin_dst=/usr/local/bin/model-proxy
conf=/etc/model-proxy
certs=$conf/certs
state=/var/lib/model-proxy
unit_dst=/etc/systemd/system/model-proxy.service
unit_src=$repo/config/model-proxy.service

say() { echo "install: $*"; }
warn() { echo "install: warning: $*" >&2; }
die() { echo "install: error: $*" >&2; exit 1; }

# Installs SRC as DST (root-owned, MODE) unless it is already identical; sets changed=1 if it was not.
install_file() {
    local src=$1 dst=$2 mode=$3 what=$4
    if [ -f "$dst" ] && cmp -s "$src" "$dst"; then
        say "$dst is up to date$what"
    else
        install -D -m "$mode" -o root -g root "$src" "$dst"
        say "installed $dst$what"
        changed=1
    fi
}

usage() {
    sed -n '2,5p' "$0" | sed 's/^# \{0,1\}//'
}

systemd_running() { [ -d /run/systemd/system ] && command -v systemctl >/dev/null; }

uninstall() {
    if systemd_running; then
        systemctl disable --now "$name.service" 2>/dev/null || true
    elif [ -e "$unit_dst" ]; then
        say "systemd is not running; if the service runs elsewhere, stop it yourself"
    fi
    if [ -e "$unit_dst" ]; then
        rm -f "$unit_dst"
        say "removed $unit_dst"
    fi
    if systemd_running; then
        systemctl daemon-reload
        systemctl reset-failed "$name.service" 2>/dev/null || true
    fi
    if [ -e "$bin_dst" ]; then
        rm -f "$bin_dst"
        say "removed $bin_dst"
    fi
    say "kept $conf (config, certificates), $state (tokens) and the user $name."
    say "to remove them too: rm -rf $conf $state && userdel $name"
}

# Is PATH readable by the service user?
readable_by_service() {
    runuser -u "$name" -- test -r "$1" 2>/dev/null
}

install_all() {
    local src=${1:-$repo/target/x86_64-unknown-linux-musl/release/model-proxy}
    local changed=0

    [ -f "$src" ] || die "no binary at $src; build it with scripts/build-static.sh or give its path"
    [ -f "$unit_src" ] || die "missing $unit_src"
    for f in servers models; do
        [ -f "$repo/config/$f.example.json" ] || die "missing $repo/config/$f.example.json"
    done
    local version
    version=$("$src" --version 2>/dev/null) || die "$src does not run (--version failed)"

    # The binary. install(1) replaces the file rather than writing into it, so a
    # running service keeps its old copy until it restarts.
    install_file "$src" "$bin_dst" 0755 " ($version)"

    # The system user.
    if ! getent group "$name" >/dev/null; then
        groupadd --system "$name"
        say "created group $name"
    fi
    if ! getent passwd "$name" >/dev/null; then
        local nologin=/usr/sbin/nologin
        [ -x "$nologin" ] || nologin=/sbin/nologin
        [ -x "$nologin" ] || nologin=/bin/false
        useradd --system --gid "$name" --no-create-home --home-dir /nonexistent \
            --shell "$nologin" --comment "model-proxy service" "$name"
        say "created system user $name"
    fi

    # Config: readable by the service (group), writable by root only.
    install -d -m 0750 -o root -g "$name" "$conf"
    for f in servers models; do
        local dst=$conf/$f.json
        if [ -e "$dst" ]; then
            say "keeping existing $dst"
        else
            install -m 0640 -o root -g "$name" "$repo/config/$f.example.json" "$dst"
            say "installed $dst from config/$f.example.json: edit it for your PACS and models"
        fi
        if ! readable_by_service "$dst"; then
            warn "$dst is not readable by user $name; fix with: chgrp $name $dst && chmod 0640 $dst"
        fi
    done

    # TLS: a self-signed pair unless one is there.
    install -d -m 0750 -o root -g "$name" "$certs"
    if [ -e "$certs/zhiva.crt" ] || [ -e "$certs/zhiva.key" ]; then
        say "keeping existing certificate in $certs"
    else
        if ! command -v openssl >/dev/null; then
            command -v apt-get >/dev/null || die "openssl is needed to make a certificate"
            say "installing openssl"
            apt-get update -qq
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends openssl >/dev/null
        fi
        local host=${MODEL_PROXY_CERT_HOST:-$(hostname -f 2>/dev/null || hostname 2>/dev/null || echo localhost)}
        case "$host" in "" | *" "* | "(none)") host=localhost ;; esac
        (umask 077 && "$repo/scripts/make-cert.sh" "$certs" "$host")
        say "generated a self-signed certificate for $host; browsers must be told to trust $certs/trusted.crt"
    fi
    if [ -e "$certs/zhiva.key" ]; then
        chown root:"$name" "$certs/zhiva.key"
        chmod 0640 "$certs/zhiva.key"
    fi
    for f in zhiva.crt trusted.crt; do
        if [ -e "$certs/$f" ]; then
            chown root:"$name" "$certs/$f"
            chmod 0644 "$certs/$f"
        fi
    done
    if [ ! -e "$certs/zhiva.crt" ] || [ ! -e "$certs/zhiva.key" ]; then
        warn "$certs needs both zhiva.crt and zhiva.key; the service will not start without them"
    fi

    # State: systemd's StateDirectory= manages it too; made here for runs without systemd.
    install -d -m 0700 -o "$name" -g "$name" "$state"

    # The unit.
    install_file "$unit_src" "$unit_dst" 0644 ""

    # Config check, as the service user sees it.
    local config_ok=1
    if ! runuser -u "$name" -- "$bin_dst" check-config --config "$conf"; then
        config_ok=0
        warn "the config in $conf has problems (above); fix them before starting the service"
    fi

    if systemd_running; then
        systemctl daemon-reload
        if [ "$config_ok" = 1 ]; then
            if [ "$changed" = 1 ] && systemctl is-active --quiet "$name.service"; then
                systemctl restart "$name.service"
                say "restarted $name.service"
            fi
            systemctl enable --now "$name.service"
            say "$name.service is enabled and started; logs: journalctl -u $name -f"
        else
            systemctl enable "$name.service"
            say "$name.service is enabled; start it once the config is fixed: systemctl start $name"
        fi
    else
        say "systemd is not running here; on a systemd host run:"
        say "  systemctl daemon-reload && systemctl enable --now $name"
        say "or run it in the foreground (as user $name):"
        say "  runuser -u $name -- $bin_dst serve --config $conf --state-dir $state --tls-cert $certs/zhiva.crt --tls-key $certs/zhiva.key"
    fi
    say "settings (ZHIVA_*, see model-proxy --help) go in /etc/default/$name; reload config with: systemctl reload $name"
}

case "${1:-}" in
    -h | --help) usage; exit 0 ;;
esac
[ "$(id -u)" = 0 ] || die "run as root (e.g. sudo $0 $*)"
case "${1:-}" in
    --uninstall) uninstall ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) install_all "${1:-}" ;;
esac
