#!/usr/bin/env bash
# Install a real Apptainer for development and CI on Debian bookworm (root), and print the path
# of its `apptainer`. Idempotent: with apptainer already on PATH, or installed here before, it
# only prints the path.
#
# Bookworm has no apptainer package and sid's needs glibc >= 2.38, so sid's apptainer and the
# libraries it needs are unpacked into their own prefix and pointed at that prefix's loader with
# patchelf; the host's libc is not touched. The .debs come from ../shared/apptainer-debs/ when
# that folder exists (pinned copies, checked against the sha256 below), else from Debian sid
# through apt with a private apt state (the pinned versions when sid still has them).
#   APPTAINER_PREFIX  where to install (default /opt/chatspace-apptainer)
#   APPTAINER_DEBS    folder of pinned .debs (default ../shared/apptainer-debs)
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
PREFIX=${APPTAINER_PREFIX:-/opt/chatspace-apptainer}
DEBS=${APPTAINER_DEBS:-$REPO/../shared/apptainer-debs}
ROOT=$PREFIX/root
PINS="26cf96e08fccb0e50ea0f285a5a19f940ee873d167a0680584fe6eba7d197d65  apptainer_1.4.5-2_amd64.deb
5c71715c51103beb4fbba9fe9f8dff604af6610dfa71c70bff342f54a7860803  libc6_2.43-7_amd64.deb
2d97c9f6ce55043caff1f6818ff9f85693528604f9d7538bd1ff61a492db8567  libseccomp2_2.6.1-1+b2_amd64.deb
bbf13c9326764d05e37e6590debdaa6f33af6bd822e3ca1204789d9d1dc23b11  libsqlite3-0_3.53.4-2_amd64.deb"

die() { echo "dev-apptainer: $*" >&2; exit 1; }

if command -v apptainer >/dev/null 2>&1; then
    command -v apptainer
    exit 0
fi
if [ -x "$PREFIX/bin/apptainer" ] && "$PREFIX/bin/apptainer" version >/dev/null 2>&1; then
    echo "$PREFIX/bin/apptainer"
    exit 0
fi
[ "$(id -u)" = 0 ] || die "run as root (it installs under $PREFIX and sets capabilities)"
[ "$(dpkg --print-architecture)" = amd64 ] || die "only amd64 is pinned"
# patchelf for the relocation; squashfs-tools is what apptainer's package depends on
command -v patchelf >/dev/null && command -v mksquashfs >/dev/null ||
    apt-get -o DPkg::Lock::Timeout=600 install -y -q patchelf squashfs-tools >&2

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if [ -d "$DEBS" ]; then
    cp "$DEBS"/*.deb "$work/"
    (cd "$work" && echo "$PINS" | sha256sum --quiet -c -) || die "checksums differ in $DEBS"
else
    echo "dev-apptainer: $DEBS not found: downloading from Debian sid" >&2
    apt_state=$work/apt
    mkdir -p "$apt_state/lists/partial" "$apt_state/cache/archives/partial"
    echo "deb http://deb.debian.org/debian sid main" > "$apt_state/sources.list"
    opts=(-o "Dir::State=$apt_state" -o "Dir::Cache=$apt_state/cache"
          -o "Dir::Etc::SourceList=$apt_state/sources.list" -o "Dir::Etc::SourceParts=-"
          -o "APT::Get::List-Cleanup=0")
    apt-get "${opts[@]}" update -q >&2
    while read -r _ deb; do
        name=${deb%%_*}
        version=$(echo "$deb" | cut -d_ -f2)
        (cd "$work" && { apt-get "${opts[@]}" download "$name=${version//%3a/:}" >&2 ||
            { echo "dev-apptainer: $name $version gone from sid, taking sid's" >&2;
              apt-get "${opts[@]}" download "$name" >&2; }; })
    done <<< "$PINS"
    rm -rf "$apt_state"
    (cd "$work" && echo "$PINS" | sha256sum --quiet -c - 2>/dev/null) ||
        echo "dev-apptainer: sid's packages differ from the pinned ones" >&2
fi

rm -rf "$PREFIX"
mkdir -p "$ROOT" "$PREFIX/bin"
for deb in "$work"/*.deb; do
    dpkg-deb -x "$deb" "$ROOT"
done
loader=$ROOT/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2
[ -e "$loader" ] || die "no loader in the unpacked libc6"
rpath=$ROOT/usr/lib/x86_64-linux-gnu:$ROOT/lib/x86_64-linux-gnu
for exe in "$ROOT"/usr/bin/* "$ROOT"/usr/lib/x86_64-linux-gnu/apptainer/bin/* \
           "$ROOT"/usr/libexec/apptainer/bin/*; do
    [ -f "$exe" ] && patchelf --print-interpreter "$exe" >/dev/null 2>&1 || continue
    patchelf --set-interpreter "$loader" --force-rpath --set-rpath "$rpath" "$exe"
done
# apptainer finds its configuration relative to its own binary.
for link in usr/etc usr/lib/etc; do ln -sfn "$ROOT/etc" "$ROOT/$link"; done
for link in usr/var usr/lib/var; do ln -sfn "$ROOT/var" "$ROOT/$link"; done
ln -sfn "$ROOT/usr/bin/apptainer" "$PREFIX/bin/apptainer"

# CAP_SYS_RESOURCE cannot be granted on this kind of machine: give root every other one.
conf=$ROOT/etc/apptainer/apptainer.conf
sed -i 's/^root default capabilities = .*/root default capabilities = file/' "$conf"
caps=$("$PREFIX/bin/apptainer" capability avail | grep -o '^CAP_[A-Z_]*' |
       grep -vx CAP_SYS_RESOURCE | paste -sd, -)
"$PREFIX/bin/apptainer" capability add --user root "$caps" >/dev/null 2>&1 ||
    die "apptainer capability add failed"
"$PREFIX/bin/apptainer" version >&2
echo "$PREFIX/bin/apptainer"
