#!/usr/bin/env bash
# The whole test suite, set-up included: system packages the tests use,
# formatting, lints, unit and integration tests.
set -euo pipefail
cd "$(dirname "$0")/.."

# libssl-dev and pkg-config: the kube client's TLS is the system OpenSSL.
packages=(systemd util-linux docker-registry skopeo openssl libssl-dev pkg-config python3 python3-nacl
          python3-cryptography rpm rpmlint rpm2cpio cpio)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

cargo fmt --all -- --check
cargo clippy --locked --all-targets -- -D warnings
# Everything but the enforcement suite, then that suite with its one line
# per scenario shown.
cargo test --locked -- --skip enforcement
cargo test --locked --test enforcement -- --nocapture
# The RPM: build, file list, rpmlint, unit checks, installed tree under systemd.
packaging/check-rpm.sh
