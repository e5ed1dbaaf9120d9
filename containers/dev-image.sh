#!/usr/bin/env bash
# Build the test image: a SIF with the same inside layout as Apptainer.def (the project in a
# venv at /opt/chatspace/.venv, Apptainer.def's own %environment and %runscript), made the way a
# machine without Docker Hub and with failing root `%post` builds allows: a debootstrapped
# bookworm root filesystem, the CPU torch wheel and the project from this checkout installed
# into it with chroot, then `apptainer build IMAGE.sif ROOTFS`. Prints the image's path.
#
# Cached under $CHATSPACE_IMAGE_CACHE (default ~/.cache/chatspace/images): the root filesystem
# with its dependencies keyed by uv.lock, pyproject.toml and this script (the slow part, rebuilt
# only when they change); the SIF also by the project's source files, so a second `make test`
# builds nothing and a code change only reinstalls the project (no dependencies) and repacks.
# Root only (debootstrap, chroot, bind mounts). Needs `apptainer` (containers/dev-apptainer.sh).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${CHATSPACE_IMAGE_CACHE:-$HOME/.cache/chatspace/images}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
APPTAINER=${APPTAINER:-apptainer}
cd "$REPO"

die() { echo "dev-image: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "run as root (debootstrap and chroot)"
command -v "$APPTAINER" >/dev/null || die "apptainer not found: run containers/dev-apptainer.sh"
# (waiting on the dpkg lock: the test suite's other set-up steps may be installing too)
for tool in debootstrap mksquashfs; do
    command -v $tool >/dev/null ||
        apt-get -o DPkg::Lock::Timeout=600 install -y -q "${tool/mksquashfs/squashfs-tools}" >&2
done

digest() { sha256sum "$@" | sha256sum | cut -c1-16; }
deps_key=$(digest uv.lock pyproject.toml containers/dev-image.sh Apptainer.def)
src_key=$(git ls-files -co --exclude-standard chatspace pyproject.toml README.md |
          sort | xargs sha256sum | sha256sum | cut -c1-16)
rootfs=$CACHE/rootfs-$deps_key
image=$CACHE/chatspace-test-$deps_key-$src_key.sif
if [ -f "$image" ]; then
    echo "$image"
    exit 0
fi
mkdir -p "$CACHE"

mounts=()
cleanup() {
    for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do umount -l "${mounts[i]}" 2>/dev/null || true; done
}
trap cleanup EXIT
bind() {  # bind host path $1 at the same path inside root filesystem $2
    [ -e "$1" ] || return 0
    if [ -d "$1" ]; then mkdir -p "$2$1"; else mkdir -p "$(dirname "$2$1")"; touch "$2$1"; fi
    mount --bind "$1" "$2$1"
    mounts+=("$2$1")
}
in_root() {  # run a command in root filesystem $1, with pip's local wheels and indexes
    local root=$1
    shift
    # the host's CA bundle: a proxy in front of PyPI may present its own certificate
    for path in /dev /proc /opt/wheels /opt/pypi /opt/pypi-more "$HOME/.cache/pip" \
                /etc/ssl/certs/ca-certificates.crt; do
        bind "$path" "$root"
    done
    cp /etc/resolv.conf "$root/etc/resolv.conf"
    [ -f /etc/pip.conf ] && cp /etc/pip.conf "$root/etc/pip.conf"
    chroot "$root" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME="$HOME" LANG=C.UTF-8 \
        PIP_FIND_LINKS="${PIP_FIND_LINKS:-}" PIP_DISABLE_PIP_VERSION_CHECK=1 \
        PIP_CERT=/etc/ssl/certs/ca-certificates.crt "$@"
    cleanup
    mounts=()
}
install_project() {  # the checkout's project files into /opt/chatspace of root filesystem $1
    rm -rf "$1/opt/chatspace/src"
    mkdir -p "$1/opt/chatspace/src"
    git ls-files -co --exclude-standard chatspace pyproject.toml README.md |
        tar -cf - -T - | tar -xf - -C "$1/opt/chatspace/src"
}

if [ ! -d "$rootfs" ]; then
    echo "dev-image: building the root filesystem (debootstrap, torch, dependencies)" >&2
    find "$CACHE" -maxdepth 1 -name 'rootfs-*' ! -name "rootfs-$deps_key*" -exec rm -rf {} +
    tmp=$rootfs.tmp
    if [ ! -f "$tmp/.debootstrapped" ]; then
        rm -rf "$tmp"
        debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
            bookworm "$tmp" "$MIRROR" >&2
        touch "$tmp/.debootstrapped"
    fi
    install_project "$tmp"
    in_root "$tmp" python3 -m venv /opt/chatspace/.venv
    in_root "$tmp" /opt/chatspace/.venv/bin/pip install -q torch==2.13.0
    in_root "$tmp" /opt/chatspace/.venv/bin/pip install -q /opt/chatspace/src
    rm -rf "$tmp/var/cache/apt/archives"/*.deb "$tmp/var/lib/apt/lists"/* "$tmp/.debootstrapped"
    mv "$tmp" "$rootfs"
fi

# This checkout's project (its dependencies are the root filesystem's), then the image's
# environment and runscript, taken from Apptainer.def itself.
install_project "$rootfs"
in_root "$rootfs" /opt/chatspace/.venv/bin/pip install -q --no-deps --force-reinstall \
    /opt/chatspace/src
rm -rf "$rootfs/opt/chatspace/src/build"
section() { awk -v s="%$1" '$1 == s {on = 1; next} /^%/ {on = 0} on' Apptainer.def; }
mkdir -p "$rootfs/.singularity.d/env"
{ echo "#!/bin/sh"; section environment; } > "$rootfs/.singularity.d/env/90-environment.sh"
{ echo "#!/bin/sh"; section runscript; } > "$rootfs/.singularity.d/runscript"
chmod 755 "$rootfs/.singularity.d/env/90-environment.sh" "$rootfs/.singularity.d/runscript"
rm -f "$CACHE"/chatspace-test-"$deps_key"-*.sif
# lz4, not mksquashfs's gzip: ~4 s of CPU instead of ~150 s for the 2 GB root filesystem (the
# build overlaps the tests), for a SIF 1.4x larger that Apptainer mounts the same way
"$APPTAINER" -s build --mksquashfs-args "-comp lz4" "$image.tmp" "$rootfs" >&2
mv "$image.tmp" "$image"
echo "$image"
