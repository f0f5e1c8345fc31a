#!/usr/bin/env bash
# Installs the system tools the test suite uses, from Debian's packages, when missing.
#
#   promtool   (package `prometheus`)  tests/deploy/test_alerts.py, test_dashboard.py
#   libfuse3   (package `libfuse3-3`)  the power-cut filesystem, tests/support/powercut.py;
#              the library alone: Debian's `fuse3` would remove `fuse` 2
#   chromium, chromedriver (`chromium`, `chromium-driver`), npm (`npm`)
#              the browser playback test (tests/e2e/test_browser_playback.py; npm
#              fetches hls.js into tests/browser, see the Makefile)
#
# Only promtool is required: the tests of the others skip, saying why, where they are
# missing, so a machine that cannot install them (not root) still runs the suite.
#
# Non-interactive; `apt-get update` runs only when the install fails without it (a
# fresh machine has no package lists). Needs root, or passwordless sudo. The
# package's daemon is not started: only its promtool binary is wanted.
set -euo pipefail

have_libfuse3() {  # no pipe into grep -q: under pipefail its early exit fails the pipe
    local cache
    cache=$({ ldconfig -p || /sbin/ldconfig -p; } 2>/dev/null || true)
    [[ $cache == *libfuse3.so* ]] || compgen -G '/usr/lib*/**/libfuse3.so.3*' >/dev/null ||
        compgen -G '/lib/*/libfuse3.so.3*' >/dev/null
}

packages=()
command -v promtool >/dev/null 2>&1 || packages+=(prometheus)
have_libfuse3 || packages+=(libfuse3-3)
command -v chromium >/dev/null 2>&1 || packages+=(chromium)
command -v chromedriver >/dev/null 2>&1 || packages+=(chromium-driver)
command -v npm >/dev/null 2>&1 || packages+=(npm)
if [ ${#packages[@]} -eq 0 ]; then
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "system-deps: missing ${packages[*]} and this is not a Debian-like system;" \
         "install Prometheus's promtool (2.x or later) and libfuse3" >&2
    exit 1
fi

as_root=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        as_root=(sudo -n)
    else
        if [[ " ${packages[*]} " != *" prometheus "* ]]; then
            echo "system-deps: not root, so not installing ${packages[*]}: the tests" \
                 "that need them will skip, saying so" >&2
            exit 0
        fi
        echo "system-deps: missing; run as root or install:" \
             "apt-get install ${packages[*]}" >&2
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

install_packages() {
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q --no-install-recommends \
        -o DPkg::Lock::Timeout=300 -o Dpkg::Options::=--force-confdef \
        -o Dpkg::Options::=--force-confold "${packages[@]}"
}

echo "system-deps: installing Debian packages: ${packages[*]}" >&2
if ! install_packages; then
    echo "system-deps: install failed; updating the package lists and retrying" >&2
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get update -q -o DPkg::Lock::Timeout=300
    install_packages
fi

command -v promtool >/dev/null 2>&1 || {
    echo "system-deps: the prometheus package installed no promtool on PATH" >&2
    exit 1
}
have_libfuse3 || {
    echo "system-deps: the libfuse3-3 package installed no libfuse3" >&2
    exit 1
}
promtool --version 2>&1 | head -n 1 >&2
