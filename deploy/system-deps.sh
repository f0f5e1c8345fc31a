#!/usr/bin/env bash
# Installs the system tools the test suite uses, from Debian's packages, when missing.
#
#   promtool  (package `prometheus`)  tests/deploy/test_alerts.py, test_dashboard.py
#
# Non-interactive; `apt-get update` runs only when the install fails without it (a
# fresh machine has no package lists). Needs root, or passwordless sudo. The
# package's daemon is not started: only its promtool binary is wanted.
set -euo pipefail

if command -v promtool >/dev/null 2>&1; then
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "system-deps: promtool is missing and this is not a Debian-like system;" \
         "install Prometheus's promtool (2.x or later) and put it on PATH" >&2
    exit 1
fi

as_root=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        as_root=(sudo -n)
    else
        echo "system-deps: promtool is missing; run as root or install it:" \
             "apt-get install prometheus" >&2
        exit 1
    fi
fi

# invoke-rc.d and deb-systemd-invoke consult policy-rc.d: exit status 101 means
# "do not start services". Install one for the duration unless the machine has its own.
policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
    "${as_root[@]}" sh -c "printf '#!/bin/sh\nexit 101\n' > $policy && chmod 755 $policy"
    trap '"${as_root[@]}" rm -f "$policy"' EXIT
fi

install_prometheus() {
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q --no-install-recommends \
        -o DPkg::Lock::Timeout=300 -o Dpkg::Options::=--force-confdef \
        -o Dpkg::Options::=--force-confold prometheus
}

echo "system-deps: installing Debian package prometheus (for promtool)" >&2
if ! install_prometheus; then
    echo "system-deps: install failed; updating the package lists and retrying" >&2
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get update -q -o DPkg::Lock::Timeout=300
    install_prometheus
fi

command -v promtool >/dev/null 2>&1 || {
    echo "system-deps: the prometheus package installed no promtool on PATH" >&2
    exit 1
}
promtool --version 2>&1 | head -n 1 >&2
