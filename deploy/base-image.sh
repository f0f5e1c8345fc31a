#!/usr/bin/env bash
# Builds a local stand-in for python:3.12-slim-bookworm when no image registry is
# reachable: a minimal Debian bookworm root file system made by debootstrap, with
# Debian's Python 3.11 (python3, python3-venv), tini and ca-certificates, imported
# as a Docker image. Only deploy/docker-smoke.sh uses it (as --build-arg
# BASE_IMAGE=...); the Dockerfile's default stays the official python image.
#
#   bash deploy/base-image.sh [IMAGE]        # default local/bookworm-python
#
# Idempotent: does nothing when the image already exists (FORCE=1 rebuilds).
# Needs root, debootstrap and a running Docker engine. Environment:
#   DOCKER          docker client to use (default: docker)
#   DEBIAN_MIRROR   default: the first bookworm mirror in /etc/apt/sources.list*,
#                   else http://deb.debian.org/debian
#
# The host's extra CA certificates (/usr/local/share/ca-certificates/*.crt) are
# added to the image, and pip is pointed at the system bundle, so that pip inside
# the build reaches the package index the way the host does (e.g. through a
# TLS-intercepting egress proxy). Nothing host-specific goes into the Dockerfile.
set -euo pipefail

IMAGE="${1:-local/bookworm-python}"
DOCKER="${DOCKER:-docker}"
SUITE=bookworm

log() { printf '[base-image] %s\n' "$*" >&2; }

if [[ "${FORCE:-0}" != 1 ]] && $DOCKER image inspect "$IMAGE" >/dev/null 2>&1; then
    log "$IMAGE exists; nothing to do (FORCE=1 rebuilds)"
    exit 0
fi

if [[ $(id -u) -ne 0 ]]; then
    log "debootstrap needs root"
    exit 1
fi
if ! command -v debootstrap >/dev/null; then
    log "installing debootstrap"
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq debootstrap >&2
fi

find_mirror() {
    local f w
    # deb822 (.sources): "URIs: http://..." followed by "Suites: bookworm ..."
    for f in /etc/apt/sources.list.d/*.sources; do
        [[ -f "$f" ]] || continue
        awk '
            /^URIs:/    { uri = $2 }
            /^Suites:/  { for (i = 2; i <= NF; i++) if ($i == "bookworm" && uri ~ /\/debian\/?$/) { print uri; exit } }
            /^$/        { uri = "" }
        ' "$f" | head -n1
    done
    # one-line format: "deb http://... bookworm main"
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -f "$f" ]] || continue
        while read -r -a w; do
            if [[ "${w[0]:-}" == deb && "${w[2]:-}" == "$SUITE" && "${w[1]:-}" == */debian* ]]; then
                echo "${w[1]}"
            fi
        done < <(grep -E '^[[:space:]]*deb[[:space:]]' "$f" | sed 's/\[[^]]*\]//')
    done
}

MIRROR="${DEBIAN_MIRROR:-$(find_mirror | head -n1)}"
MIRROR="${MIRROR:-http://deb.debian.org/debian}"

ROOTFS="$(mktemp -d /tmp/base-rootfs.XXXXXX)"
cleanup() { rm -rf --one-file-system "$ROOTFS"; }
trap cleanup EXIT

log "debootstrap $SUITE from $MIRROR into $ROOTFS (a few minutes)"
debootstrap --variant=minbase \
    --include=python3,python3-venv,tini,ca-certificates \
    "$SUITE" "$ROOTFS" "$MIRROR" >"$ROOTFS.debootstrap.log" 2>&1 || {
        log "debootstrap failed; last lines of $ROOTFS.debootstrap.log:"
        tail -n 30 "$ROOTFS.debootstrap.log" >&2
        exit 1
    }
rm -f "$ROOTFS.debootstrap.log"

# The updates and security suites, like the official image's sources.
cat >"$ROOTFS/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb ${MIRROR%/debian*}/debian-security $SUITE-security main
EOF

# What debian:bookworm-slim (the official python image's base) configures: apt
# keeps no package caches or downloaded .debs in image layers, fetches no
# translations, and dpkg installs no documentation.
cat >"$ROOTFS/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
echo 'Acquire::Languages "none";' >"$ROOTFS/etc/apt/apt.conf.d/docker-no-languages"
echo 'Apt::AutoRemove::SuggestsImportant "false";' >"$ROOTFS/etc/apt/apt.conf.d/docker-autoremove-suggests"
cat >"$ROOTFS/etc/dpkg/dpkg.cfg.d/docker" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
EOF

# Trust what the host trusts (for pip over a TLS-intercepting egress proxy).
shopt -s nullglob
extra=(/usr/local/share/ca-certificates/*.crt)
if ((${#extra[@]})); then
    mkdir -p "$ROOTFS/usr/local/share/ca-certificates"
    cp "${extra[@]}" "$ROOTFS/usr/local/share/ca-certificates/"
    chroot "$ROOTFS" update-ca-certificates >/dev/null 2>&1
    log "added ${#extra[@]} CA certificate(s) from the host"
fi
shopt -u nullglob
# Debian's pip (23.x) uses certifi's bundle unless told otherwise.
printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' >"$ROOTFS/etc/pip.conf"

# Slim it down the way the official slim images are.
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin \
    "$ROOTFS"/var/cache/apt/archives/*.deb \
    "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/* "$ROOTFS"/var/log/*.log \
    "$ROOTFS"/tmp/* "$ROOTFS"/root/.cache
find "$ROOTFS/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete
# The image is imported without a /proc or /dev; remove leftovers of the chroot.
rm -rf "$ROOTFS"/proc/* "$ROOTFS"/sys/* 2>/dev/null || true

# mktemp made the root 0700; as the image's "/" that would lock out non-root users.
chmod 0755 "$ROOTFS"
log "importing as $IMAGE"
tar --numeric-owner -C "$ROOTFS" -c . | $DOCKER import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    - "$IMAGE" >/dev/null
log "built $IMAGE ($($DOCKER run --rm "$IMAGE" python3 --version 2>&1))"
