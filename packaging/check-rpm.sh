#!/usr/bin/env bash
# Builds the RPM and checks it: file list, rpmlint, the unit (verify and
# security exposure), and the installed tree running under a systemd user
# manager (tests/systemd.rs with IPA_INSTALLED_TREE). Prints a summary line.
set -uo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
passed=0
failed=0
ok() { echo "packaging: ok: $*"; passed=$((passed + 1)); }
bad() { echo "packaging: FAILED: $*"; failed=$((failed + 1)); }

if ! "$top/packaging/build-rpm.sh" "$work/out" >/dev/null 2>"$work/build.err"; then
  cat "$work/build.err" >&2
  echo "0 passed, 1 failed"
  exit 1
fi
rpm_file=$(ls "$work"/out/*.rpm)
ok "built $(basename "$rpm_file") ($(du -k "$rpm_file" | cut -f1) KiB)"

rpm -qlp "$rpm_file" 2>/dev/null | sort >"$work/files"
for f in /usr/bin/image-policy-agent /usr/bin/agentctl \
  /usr/lib/systemd/system/image-policy-agent.service \
  /usr/lib/image-policy-agent/config.d/00-defaults.toml \
  /etc/image-policy-agent/config.toml /usr/lib/tmpfiles.d/image-policy-agent.conf \
  /usr/lib/systemd/system-preset/80-image-policy-agent.preset \
  /usr/share/bash-completion/completions/agentctl /usr/share/zsh/site-functions/_agentctl; do
  grep -qx "$f" "$work/files" || bad "rpm -qlp lacks $f"
done
for f in man8/image-policy-agent.8 man8/agentctl.8 man5/image-policy-agent.toml.5 "licenses/image-policy-agent[^/]*/LICENSE"; do
  grep -q "$f" "$work/files" || bad "rpm -qlp lacks $f"
done
[ "$failed" -eq 0 ] && ok "rpm -qlp lists binaries, unit, config, tmpfiles, preset, man pages, completions, license"
rpm -qp --qf '[%{FILEFLAGS:fflags} %{FILENAMES}\n]' "$rpm_file" 2>/dev/null | grep -q '^cn /etc/image-policy-agent/config.toml$' \
  && ok "config.toml is %config(noreplace)" || bad "config.toml is not %config(noreplace)"

rpmlint -r "$top/packaging/image-policy-agent.rpmlintrc" "$rpm_file" >"$work/rpmlint" 2>&1
summary=$(grep -E '[0-9]+ packages and [0-9]+ specfiles checked' "$work/rpmlint" || tail -n1 "$work/rpmlint")
errors=$(echo "$summary" | sed -n 's/.* \([0-9]\+\) errors.*/\1/p')
if [ "${errors:-1}" = "0" ]; then ok "rpmlint: $summary"; else cat "$work/rpmlint"; bad "rpmlint: $summary"; fi
grep -E ': W: ' "$work/rpmlint" | sed 's/^/packaging: rpmlint warning: /'

mkdir -p "$work/tree"
(cd "$work/tree" && rpm2cpio "$rpm_file" | cpio -idm --quiet)
unit="$work/tree/usr/lib/systemd/system/image-policy-agent.service"
# verify needs what a node has besides our package: the host's targets and
# slices and /bin/kill (ExecReload), added to a copy of the tree.
cp -a "$work/tree" "$work/vroot"
cp -a /usr/lib/systemd/system/*.target /usr/lib/systemd/system/*.slice "$work/vroot/usr/lib/systemd/system/"
mkdir -p "$work/vroot/usr/bin" && cp /usr/bin/kill "$work/vroot/usr/bin/kill" && ln -s usr/bin "$work/vroot/bin"
if out=$(systemd-analyze verify --man=no --root="$work/vroot" /usr/lib/systemd/system/image-policy-agent.service 2>&1) && [ -z "$out" ]; then
  ok "systemd-analyze verify: clean"
else
  bad "systemd-analyze verify: $out"
fi
exposure=$(systemd-analyze security --offline=true "$unit" 2>/dev/null | sed -n 's/.*Overall exposure level for .*: \([0-9.]*\).*/\1/p')
if awk -v e="${exposure:-99}" 'BEGIN { exit !(e <= 2.5) }'; then ok "systemd-analyze security exposure $exposure (target <= 2.5)"; else bad "exposure ${exposure:-unknown} > 2.5"; fi

if IPA_INSTALLED_TREE="$work/tree" cargo test --locked --quiet --test systemd >"$work/systemd.log" 2>&1; then
  ok "installed tree runs under a systemd user manager with the packaged unit"
else
  cat "$work/systemd.log" >&2
  bad "installed tree under systemd"
fi

echo "packaging: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
