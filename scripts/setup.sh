#!/usr/bin/env bash
# Sets up virtkit on Debian 12 (as root): system packages, a venv in .venv with virtkit installed,
# then runs what is asked: `demo` (the main job), `test` (the test suite), or nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
    echo "setup.sh: run as root (virtkit manages namespaces, mounts and cgroups)" >&2
    exit 1
fi

# busybox-static: the busybox image and runtime tests; gcc + libc6-dev: static probe programs of the escape
# tests; podman: the compatibility test drives virtkit-runtime through it; mmdebstrap: debian images;
# qemu-utils: qemu-img, which makes the VM disk overlays; zstd: compresses VM snapshots' memory
PKGS=(python3 python3-venv python3-dev gcc libc6-dev busybox-static libseccomp2 iproute2 procps util-linux
      e2fsprogs ca-certificates dpkg-dev podman netavark mmdebstrap skopeo qemu-system-x86 qemu-utils zstd nftables)
missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ] || [ ! -d /var/lib/apt/lists ] || [ -z "$(ls -A /var/lib/apt/lists 2>/dev/null | grep -v lock)" ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    [ "${#missing[@]}" -gt 0 ] && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/pip install -q --disable-pip-version-check --config-settings editable_mode=compat -e '.[test]' >.venv/pip-install.log 2>&1 || {
    cat .venv/pip-install.log >&2; echo "setup.sh: pip install failed" >&2; exit 1; }
.venv/bin/python -c 'import virtkit, fastapi, uvicorn, sqlalchemy, pyseccomp, zstandard, pycdlib' || {
    echo "setup.sh: the Python packages did not install" >&2; exit 1; }

# Launchers for the hot commands, started with -IS: skipping the site import saves ~12 ms per command.
# They put this checkout and the venv's packages on sys.path themselves (pip's own launchers work too, slower).
SITE=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
for spec in "virtkit:virtkit.cli.main:main" "virtkit-runtime:virtkit.container.cli:entry" \
            "virtkit-sched:virtkit.sched.cli:main" "virtkit-vmm:virtkit.vm.kvm.cli:entry"; do
    IFS=: read -r cmd mod fn <<<"$spec"
    cat > ".venv/bin/$cmd" <<LAUNCHER
#!$PWD/.venv/bin/python -IS
import sys
sys.path[:0] = ["$PWD", "$SITE"]
from $mod import $fn
sys.exit($fn())
LAUNCHER
    chmod 755 ".venv/bin/$cmd"
done

# bytecode ahead of time: every virtkit command starts faster, also where PYTHONDONTWRITEBYTECODE is set
.venv/bin/python -m compileall -q virtkit >/dev/null

case "${1:-}" in
    demo) exec bash scripts/demo.sh ;;
    test) shift; exec .venv/bin/python -m pytest "$@" ;;
    "") echo "virtkit is set up: source .venv/bin/activate, then run 'virtkit --help'" ;;
    *) echo "setup.sh: unknown action '$1' (demo | test)" >&2; exit 2 ;;
esac
