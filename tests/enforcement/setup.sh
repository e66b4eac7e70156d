#!/usr/bin/env bash
# Test tooling for the enforcement suite, cached between runs:
# Debian trixie's skopeo (containers/image 5.34, sigstore enabled) and cosign,
# downloaded with a private apt configuration (nothing under /etc/apt changes)
# and extracted into a private sysroot. Debian 12's own skopeo disables
# sigstore, so it is only used for the "older parser" check.
# Prints the sysroot path on stdout; everything else goes to stderr.
set -euo pipefail

cache=${IPA_TEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/image-policy-agent-tests}
t=$cache/trixie
sysroot=$t/sysroot
if [ -x "$sysroot/usr/bin/skopeo" ] && [ -x "$sysroot/usr/bin/cosign" ]; then
  echo "$sysroot"
  exit 0
fi

mkdir -p "$t/lists/partial" "$t/cache/archives/partial" "$t/debs"
mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
if [ -z "$mirror" ]; then
  mirror=$(awk '$1 == "deb" {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
fi
[ -n "$mirror" ] || { echo "setup.sh: no Debian mirror found in the apt sources" >&2; exit 1; }
echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror trixie main" >"$t/sources.list"
apto=(-o "Dir::Etc::sourcelist=$t/sources.list" -o Dir::Etc::sourceparts=/dev/null
      -o "Dir::State::Lists=$t/lists" -o "Dir::Cache=$t/cache" -o Debug::NoLocking=1
      -o APT::Sandbox::User=root)
apt-get "${apto[@]}" -qq update >&2
(cd "$t/debs" && rm -f ./*.deb && apt-get "${apto[@]}" -qq download \
  skopeo cosign libc6 libgpgme11t64 libassuan9 libgpg-error0 libsqlite3-0 >&2)
rm -rf "$sysroot.tmp"
mkdir -p "$sysroot.tmp"
for d in "$t"/debs/*.deb; do dpkg-deb -x "$d" "$sysroot.tmp"; done
rm -rf "$sysroot"
mv "$sysroot.tmp" "$sysroot"
echo "$sysroot"
