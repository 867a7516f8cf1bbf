#!/bin/sh
# verify_systemd.sh - every unit in deploy/systemd/ passes `systemd-analyze verify`.
# The units name /usr/local/bin/tidal, /usr/sbin/nats-server and /etc/tidal/tidal.env as
# installed; here they are copied to a temporary directory with those paths pointed at this
# build's binary, the nats-server found and the shipped environment file, then verified (template
# units as an instance: tidal-rollout@1, tidal-env@gsm8k). Any warning fails the test.
# usage: verify_systemd.sh SOURCE_DIR TIDAL_BINARY NATS_SERVER
set -eu
src=$1 tidal=$2 nats=$3
if ! command -v systemd-analyze >/dev/null 2>&1; then
    echo "SKIP: systemd-analyze is not installed (Debian's systemd)"; exit 77
fi
tmp=$(mktemp -d /tmp/tidal-systemd-XXXXXX)
trap 'rm -rf "$tmp"' EXIT
for f in "$src"/deploy/systemd/*.service; do
    sed -e "s|/usr/local/bin/tidal|$tidal|g" -e "s|/usr/sbin/nats-server|$nats|g" \
        -e "s|/etc/tidal/tidal.env|$src/deploy/systemd/tidal.env|g" "$f" > "$tmp/$(basename "$f")"
done
cd "$tmp"
units="nats-server.service tidal-controller.service tidal-trainer.service tidal-rollout@1.service tidal-env@gsm8k.service"
out=$(SYSTEMD_LOG_LEVEL=notice systemd-analyze verify --man=no $units 2>&1) || { echo "$out"; echo "FAIL: systemd-analyze verify"; exit 1; }
# verify exits 0 on some problems it only warns about: any output is a finding
if [ -n "$out" ]; then echo "$out"; echo "FAIL: systemd-analyze verify printed findings"; exit 1; fi
echo "ok: $units"
