#!/usr/bin/env bash
# Builds the binary RPM the way RPM builders do: from a source tarball and a
# vendored-crates tarball, offline. Usage: packaging/build-rpm.sh OUTDIR
set -euo pipefail
out=$(realpath -m "${1:?usage: packaging/build-rpm.sh OUTDIR}")
top=$(cd "$(dirname "$0")/.." && pwd)
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$top/Cargo.toml" | head -n1)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work"/{SOURCES,SPECS,BUILD,BUILDROOT,RPMS,SRPMS} "$out"

# The tracked files, as a release tarball would hold them.
(cd "$top" && git ls-files -z | tar --null -T - --transform "s,^,image-policy-agent-$version/," \
  -czf "$work/SOURCES/image-policy-agent-$version.tar.gz")
# Every crate the lockfile names, for an offline build.
(cd "$top" && cargo vendor --locked --versioned-dirs "$work/v/vendor" >/dev/null)
tar -C "$work/v" -czf "$work/SOURCES/image-policy-agent-$version-vendor.tar.gz" vendor

# --nodeps: the build host is not an RPM distribution; cargo is on PATH.
rpmbuild --define "_topdir $work" --nodeps -bb "$top/rpm.spec" >"$work/rpmbuild.log" 2>&1 || {
  tail -n 50 "$work/rpmbuild.log" >&2
  exit 1
}
cp "$work"/RPMS/*/*.rpm "$out/"
ls "$out"/*.rpm
