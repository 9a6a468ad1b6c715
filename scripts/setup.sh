#!/usr/bin/env bash
# Installs everything porttrap needs on Debian 12 (system packages + a virtualenv), then
#   setup.sh run [ARGS...]   runs the daemon: `porttrap run ARGS...` (built-in defaults, or
#                            /etc/porttrap/porttrap.toml when present)
#   setup.sh test [ARGS...]  runs the whole test suite (lint, types, unit, contract, integration)
# Run it as root from a checkout. Idempotent: a second run installs nothing new.
# PORTTRAP_NETNS=NAME setup.sh run: install here, then run the daemon inside network namespace
# NAME (made if missing, with lo up): a way to try porttrap without touching this host's network.
set -euo pipefail
# What this installs (the venv, /usr/local/sbin/porttrap) and every state directory the daemon
# or the tests make must not be writable by group or others (porttrap refuses such a state_dir).
umask 022
cd "$(dirname "$0")/.."

mode=${1:-}
case "$mode" in
  run|test) shift ;;
  *) echo "usage: $0 run|test [ARGS...]" >&2; exit 64 ;;
esac
[ "$(id -u)" = 0 ] || { echo "setup.sh: run me as root (porttrap manages the kernel firewall)" >&2; exit 1; }

# nftables + libnftables' Python binding (python3-nftables) for the firewall, iproute2 for the
# network namespaces the tests build; Debian's own python3 so that the binding imports. ipset and
# iptables: the ipset backend (backend = "ipset", or "auto" without nftables) and its tests;
# neither package starts a service or loads rules.
packages=(nftables python3 python3-venv python3-nftables iproute2 ipset iptables)
[ "$mode" = test ] && packages+=(procps nmap masscan)  # bench/nmap_scan.py, hold_scan.py, test_hold_scans.py
# `porttrap report` tests render the page in headless Chromium and read the screenshot:
# chromium, a font so that text renders (--no-install-recommends pulls none), tesseract-ocr (OCR)
[ "$mode" = test ] && packages+=(chromium fonts-dejavu-core tesseract-ocr)
# completion tests: bash-completion loads the script, zsh and tmux run it as a person would
[ "$mode" = test ] && packages+=(bash-completion zsh tmux)
# tmux also drives `porttrap top` in tests/integration/test_top_tmux.py
# the fleet tests run throw-away PostgreSQL clusters of their own (tests/pgcluster.py), with
# certificates of a test CA that openssl makes
[ "$mode" = test ] && packages+=(postgresql openssl)
# the Debian package's test (tests/integration/test_package.py): lintian checks the package,
# mmdebstrap makes the throw-away Debian 12 it is installed in, man renders its man pages
[ "$mode" = test ] && packages+=(lintian mmdebstrap man-db)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [[ " ${missing[*]} " == *" postgresql "* ]]; then
    # Debian's package would create and start a cluster of the machine's own ("main", on port
    # 5432): the tests need only the server's programs. postgresql-common reads this drop-in
    # (createcluster.conf includes createcluster.d) when the package is configured.
    mkdir -p /etc/postgresql-common/createcluster.d
    printf '%s\n' "# porttrap's setup.sh test: the tests start clusters of their own" \
      "create_main_cluster = false" > /etc/postgresql-common/createcluster.d/porttrap-tests.conf
  fi
  echo "setup.sh: installing ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

if [ "$mode" = run ]; then venv=${PORTTRAP_VENV:-/opt/porttrap/venv}; else venv=${PORTTRAP_VENV:-$PWD/.venv}; fi
if [ ! -x "$venv/bin/python" ]; then
  # --system-site-packages: the nftables binding comes from Debian, not from PyPI
  /usr/bin/python3 -m venv --system-site-packages "$venv"
fi

if [ "$mode" = run ]; then
  "$venv/bin/python" -m pip install -q --disable-pip-version-check . >&2
  ln -sf "$venv/bin/porttrap" /usr/local/sbin/porttrap
  # man porttrap, man porttrap.toml: made from this porttrap's parser and config schema
  "$venv/bin/python" -m porttrap.cli.manpage /usr/local/share/man >/dev/null
  if [ -n "${PORTTRAP_NETNS:-}" ]; then
    if [ ! -e "/run/netns/$PORTTRAP_NETNS" ]; then
      ip netns add "$PORTTRAP_NETNS"
      ip netns exec "$PORTTRAP_NETNS" ip link set lo up
    fi
    echo "setup.sh: running porttrap inside network namespace $PORTTRAP_NETNS" >&2
    exec ip netns exec "$PORTTRAP_NETNS" "$venv/bin/porttrap" run "$@"
  fi
  exec "$venv/bin/porttrap" run "$@"
fi

"$venv/bin/python" -m pip install -q --disable-pip-version-check -e '.[test]' >&2

# fail2ban's own fail2ban-regex checks that porttrap's compatible log lines match its filters
# (tests/integration/test_fail2ban.py). The Debian package is fetched and unpacked here, NEVER
# installed: installing it starts the fail2ban service, whose default sshd jail would write
# firewall rules into this machine's own network namespace. The tests run the unpacked copy.
f2b=${PORTTRAP_FAIL2BAN:-/var/cache/porttrap-test/fail2ban}
if [ ! -x "$f2b/root/usr/bin/fail2ban-regex" ]; then
  echo "setup.sh: fetching fail2ban (unpacked into $f2b, not installed)" >&2
  mkdir -p "$f2b" && fetch=$(mktemp -d "$f2b/fetch.XXXXXX")
  (cd "$fetch" && { apt-get download -qq fail2ban 2>/dev/null \
    || { apt-get update -qq && apt-get download -qq fail2ban; }; })
  dpkg-deb -x "$fetch"/fail2ban_*.deb "$fetch/root"
  mv -T "$fetch/root" "$f2b/root" && rm -rf "$fetch"
fi
export PORTTRAP_FAIL2BAN="$f2b"
export PATH="$venv/bin:$PATH"
exec scripts/check.sh "$@"
