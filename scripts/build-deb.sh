#!/usr/bin/env bash
# Builds porttrap's Debian package for Debian 12: OUTDIR/porttrap_VERSION_all.deb (default
# OUTDIR: dist). Install it with `apt install ./dist/porttrap_VERSION_all.deb`.
#
# Needs only what a Debian 12 machine with python3-venv has (dpkg-deb, Debian's python3, pip
# from ensurepip) and PyPI for the dependencies that are vendored; runs as any user. Why a
# script and not debian/ with dpkg-buildpackage: see docs/install.md.
#
# Layout (docs/install.md says why):
#   /usr/lib/porttrap/                a private venv of Debian's python3 with
#                                     --system-site-packages: porttrap, and the dependencies
#                                     Debian 12 has too old (vendored); Debian's python3-*
#                                     for the rest (nftables, psutil, regex)
#   /usr/sbin/porttrap                -> /usr/lib/porttrap/bin/porttrap
#   /lib/systemd/system/porttrap.service, /etc/porttrap/porttrap.toml (conffile), man pages,
#   bash and zsh completions: made by porttrap itself (python3 -m porttrap.service.debian)
set -euo pipefail
umask 022
cd "$(dirname "$0")/.."

out=$(realpath -m "${1:-dist}")
python=/usr/bin/python3  # Debian's: the venv runs on it, and sees its python3-* packages
# Debian 12's python3-* packages that meet pyproject.toml's requirements: used, not vendored.
# psycopg[binary] is vendored as plain psycopg, which loads Debian's libpq5 (arch: all).
from_debian=(psutil regex)
# PyPI names of what psycopg needs newer than Debian 12 has (typing-extensions >= 4.6)
extra_vendored=("typing-extensions>=4.6")

version=$("$python" -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
pyver=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
pynext=$("$python" -c 'import sys; print("%d.%d" % (sys.version_info[0], sys.version_info[1] + 1))')
mapfile -t vendored < <("$python" - "${from_debian[@]}" <<'EOF'
import re, sys, tomllib
skip = set(sys.argv[1:])
for requirement in tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]:
    name = re.match(r"[A-Za-z0-9_.-]+", requirement).group(0)
    if name.lower() not in skip:
        print(requirement.replace("psycopg[binary]", "psycopg"))
EOF
)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root=$work/root
venv=/usr/lib/porttrap
site=$root$venv/lib/python$pyver/site-packages

echo "build-deb: porttrap $version for Python $pyver; vendored: ${vendored[*]} ${extra_vendored[*]}" >&2
# for the build only: pip, and the Debian-provided dependencies, which the generators import
# and this machine may not have installed
"$python" -m venv "$work/build"
"$work/build/bin/python" -m pip install -q --disable-pip-version-check "${from_debian[@]}"
# from a copy of the sources: setuptools' build/ in the checkout could carry a module since
# removed into the package
mkdir "$work/src"
cp -r pyproject.toml README.md src "$work/src/"
find "$work/src" \( -name __pycache__ -o -name '*.egg-info' \) -prune -exec rm -rf {} +
"$work/build/bin/python" -m pip install -q --disable-pip-version-check --no-deps \
  --no-compile --target "$site" "$work/src" "${vendored[@]}" "${extra_vendored[@]}"
rm -rf "$site/bin" "$site"/*.dist-info/direct_url.json "$site"/*.dist-info/RECORD

# the venv itself, made in place of the one the package installs: --without-pip, and only the
# files that do not name the build directory (bin/activate* do; pyvenv.cfg's command line)
"$python" -m venv --without-pip --system-site-packages "$root$venv"
rm -rf "$root$venv"/bin/activate* "$root$venv"/bin/Activate.ps1 "$root$venv/include"
rm "$root$venv/bin/python3" && ln -s "../../../bin/python3" "$root$venv/bin/python3"  # relative
sed -i '/^command = /d' "$root$venv/pyvenv.cfg"
# -I: no current directory, PYTHON* variables or user site on sys.path (root runs this);
# the venv's python, so that porttrap's children (`sys.executable -m porttrap`) find it too
cat > "$root$venv/bin/porttrap" <<EOF
#!/bin/sh
exec $venv/bin/python3 -I -m porttrap "\$@"
EOF
chmod 755 "$root$venv/bin/porttrap"
mkdir -p "$root/usr/sbin"
ln -s "../lib/porttrap/bin/porttrap" "$root/usr/sbin/porttrap"

# the unit, the conffile, man pages, completions: from the code just installed
PYTHONPATH=$site "$work/build/bin/python" -m porttrap.service.debian "$root" >/dev/null
gzip -9n "$root"/usr/share/man/man*/*

doc=$root/usr/share/doc/porttrap
mkdir -p "$doc"
cp scripts/deb/copyright "$doc/copyright"
when=$(git log -1 --format=%aD 2>/dev/null || date -R)
printf '%s\n\n%s\n\n%s\n' "porttrap ($version) bookworm; urgency=medium" \
  "  * Built from porttrap's repository by scripts/build-deb.sh." \
  " -- porttrap developers <dev@porttrap.invalid>  $when" | gzip -9n > "$doc/changelog.gz"

mkdir -p "$root/DEBIAN"
cp scripts/deb/postinst scripts/deb/prerm scripts/deb/postrm "$root/DEBIAN/"
chmod 755 "$root"/DEBIAN/post* "$root"/DEBIAN/prerm
echo /etc/porttrap/porttrap.toml > "$root/DEBIAN/conffiles"
size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
sed -e "s/@VERSION@/$version/" -e "s/@SIZE@/$size/" \
  -e "s/@PYTHON_DEPENDS@/python3 (>= $pyver), python3 (<< $pynext)/" \
  scripts/deb/control.in > "$root/DEBIAN/control"
(cd "$root" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z \
  | xargs -0 md5sum) > "$root/DEBIAN/md5sums"

find "$root" -type d -exec chmod 755 {} +
mkdir -p "$out"
deb=$out/porttrap_${version}_all.deb
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
echo "$deb"
