#!/usr/bin/env bash
# Build (once) and cache an arm64 Debian rootfs that runs TVM's RPC server under qemu user mode:
# the "emulated Raspberry Pi" of laaq-bench. Idempotent: a second run only checks and prints the path.
#
# Usage: scripts/emu_rootfs.sh [--check] [--rebuild] [--quiet]
#   (no option)  make the host ready (packages, binfmt) and the rootfs ready; print its path on stdout
#   --check      build nothing, install nothing: exit 0 (and print the path) if everything is ready,
#                1 otherwise
#   --rebuild    discard the cached rootfs and tarball and build from scratch (wheels are kept)
#   --quiet      fewer progress messages on stderr
#
# Environment:
#   LAAQ_EMU_CACHE      cache root for the emulator (default: $LAAQ_CACHE, else
#                       $HOME/.cache/laaq-bench); the rootfs lives in
#                       <cache root>/emu/<tvm-version>/rootfs, outside the repository
#   LAAQ_HOST_PYTHON    host Python whose pip downloads the aarch64 wheels (default: the repo's
#                       .venv/bin/python if present, else python3)
#   LAAQ_DEBIAN_MIRROR  Debian mirror for mmdebstrap (default http://deb.debian.org/debian)
#   LAAQ_PIP_ARGS       extra arguments for `pip download` (e.g. an index URL)
#
# Only stdout's last line is meant for programs (the rootfs path); all progress goes to stderr.
# Exit codes: 0 ready; 1 not ready (--check) or a build step failed; 2 usage; 3 needs root (the exact
# commands to run are printed).
#
# Why a chroot and not `qemu-aarch64 -L`: the RPC server starts Python child processes, and those
# only find the arm64 interpreter and libraries when the whole filesystem is arm64 (binfmt + chroot).
# Why cache it outside the repo: the build takes minutes and ~250 MB; a compressed tarball next to
# it unpacks in seconds when the directory is lost or damaged.
set -euo pipefail
SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"  # emu_chroot.sh, the one chroot recipe, lies beside

# Bump when the rootfs recipe changes: it is part of the cache key, so old caches are rebuilt.
RECIPE_VERSION=1
TVM_VERSION="${LAAQ_TVM_VERSION:-0.27.0.post1}"
TVM_FFI_VERSION="${LAAQ_TVM_FFI_VERSION:-0.1.14.post0}"
SUITE=bookworm            # glibc 2.36 >= 2.28 (the wheels' manylinux_2_28), Python 3.11
PY_VERSION=3.11           # must match $SUITE's python3
DEB_INCLUDE="python3,python3-venv,libstdc++6"
PIP_PACKAGES=("apache-tvm==${TVM_VERSION}" "apache-tvm-ffi==${TVM_FFI_VERSION}" cloudpickle psutil numpy)
HOST_APT_PACKAGES=(gcc-aarch64-linux-gnu g++-aarch64-linux-gnu qemu-user-static binfmt-support
                   mmdebstrap arch-test zstd)
MIRROR="${LAAQ_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# The project venv's Python has pip; Debian's python3 may not (no python3-pip).
if [ -n "${LAAQ_HOST_PYTHON:-}" ]; then HOST_PYTHON="$LAAQ_HOST_PYTHON"
elif [ -x "$REPO_ROOT/.venv/bin/python" ]; then HOST_PYTHON="$REPO_ROOT/.venv/bin/python"
else HOST_PYTHON=python3; fi
CACHE_ROOT="${LAAQ_EMU_CACHE:-${LAAQ_CACHE:-${HOME:-/root}/.cache/laaq-bench}}"
EMU_DIR="${CACHE_ROOT}/emu/${TVM_VERSION}"
ROOTFS="${EMU_DIR}/rootfs"
VENV_IN_ROOTFS=/opt/tvm-venv
STAMP_NAME=.laaq-emu-stamp
CHROOT_PATH="${VENV_IN_ROOTFS}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

MODE=ensure
QUIET=0
for arg in "$@"; do
  case "$arg" in
    --check) MODE=check ;;
    --rebuild) MODE=rebuild ;;
    --quiet) QUIET=1 ;;
    -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
    *) echo "emu_rootfs.sh: unknown option $arg" >&2; exit 2 ;;
  esac
done

log() { [ "$QUIET" = 1 ] || echo "[emu_rootfs] $*" >&2; }
die() { echo "[emu_rootfs] ERROR: $*" >&2; exit 1; }
is_root() { [ "$(id -u)" = 0 ]; }
now() { date +%s; }

# The cache key: everything that changes what ends up in the rootfs.
KEY_TEXT="recipe=${RECIPE_VERSION} suite=${SUITE} include=${DEB_INCLUDE} py=${PY_VERSION} pip=${PIP_PACKAGES[*]}"
KEY="$(printf '%s' "$KEY_TEXT" | sha256sum | cut -c1-16)"
TARBALL="${EMU_DIR}/rootfs-${KEY}.tar.zst"

# ---------------------------------------------------------------------------------------------
# Host: packages and binfmt
# ---------------------------------------------------------------------------------------------
HOST_ARCH="$(uname -m)"
needs_qemu() { [ "$HOST_ARCH" != aarch64 ] && [ "$HOST_ARCH" != arm64 ]; }

missing_packages() {
  local p st
  for p in "${HOST_APT_PACKAGES[@]}"; do
    if ! needs_qemu && [[ "$p" == qemu-user-static || "$p" == binfmt-support || "$p" == *aarch64-linux-gnu ]]; then
      continue
    fi
    st="$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)"
    [ "$st" = "install ok installed" ] || printf '%s ' "$p"
  done
}

binfmt_ready() {
  needs_qemu || return 0
  [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] && head -n1 /proc/sys/fs/binfmt_misc/qemu-aarch64 | grep -qx enabled
}

ensure_host() {
  local missing
  missing="$(missing_packages)"
  if [ -n "$missing" ]; then
    [ "$MODE" = check ] && { log "missing host packages: $missing"; return 1; }
    if ! is_root; then
      echo "[emu_rootfs] missing host packages; as root run:" >&2
      echo "  apt-get update && apt-get install -y --no-install-recommends $missing" >&2
      exit 3
    fi
    log "installing host packages: $missing"
    local t0; t0=$(now)
    # shellcheck disable=SC2086
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing >&2; then
      log "apt-get install failed; refreshing package lists and retrying"
      DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
      # shellcheck disable=SC2086
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing >&2
    fi
    log "host packages installed in $(( $(now) - t0 )) s"
  fi

  needs_qemu || return 0
  if ! binfmt_ready; then
    [ "$MODE" = check ] && { log "qemu-aarch64 binfmt handler not enabled"; return 1; }
    if ! is_root; then
      echo "[emu_rootfs] the qemu-aarch64 binfmt handler is not enabled; as root run:" >&2
      echo "  mountpoint -q /proc/sys/fs/binfmt_misc || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc" >&2
      echo "  update-binfmts --enable qemu-aarch64" >&2
      exit 3
    fi
    # Containers often start without binfmt_misc mounted, so the package's postinst could not
    # register the handler; register it now.
    if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
      log "mounting binfmt_misc"
      mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc \
        || die "cannot mount binfmt_misc (a container without CAP_SYS_ADMIN?); run on a host/VM where 'mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc' works"
    fi
    update-binfmts --enable qemu-aarch64 >&2 || true
    if ! binfmt_ready && [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
      echo 1 > /proc/sys/fs/binfmt_misc/qemu-aarch64 || true
    fi
    binfmt_ready || die "could not enable the qemu-aarch64 binfmt handler (update-binfmts --enable qemu-aarch64 failed)"
    log "qemu-aarch64 binfmt handler enabled"
  fi
  if [ "$MODE" != check ] && ! arch-test arm64 >/dev/null 2>&1; then
    die "arch-test arm64 failed: arm64 binaries do not run on this host even though binfmt is enabled"
  fi
}

# ---------------------------------------------------------------------------------------------
# Safe removal: never follow a bind mount into the host's /dev or /sys.
# ---------------------------------------------------------------------------------------------
mounts_under() {  # prints mount points at or below $1, deepest first
  local dir; dir="$(readlink -f "$1")"
  awk -v d="$dir" '{ m=$5; gsub(/\\040/, " ", m); if (m == d || index(m, d "/") == 1) print m }' \
    /proc/self/mountinfo | sort -r
}

safe_rm() {
  local dir="$1" m
  [ -e "$dir" ] || return 0
  while read -r m; do
    [ -n "$m" ] || continue
    log "unmounting leftover mount $m"
    umount -R "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
  done < <(mounts_under "$dir")
  if [ -n "$(mounts_under "$dir")" ]; then
    die "refusing to delete $dir: something is still mounted below it (see /proc/self/mountinfo)"
  fi
  rm -rf --one-file-system "$dir"
}

# Atomically retire a directory, then delete it: a killed deletion never leaves a half-deleted
# directory under a name that looks valid.
retire() {
  local dir="$1"
  [ -e "$dir" ] || return 0
  local trash; trash="${dir}.trash.$$.$RANDOM"
  mv "$dir" "$trash"
  safe_rm "$trash"
}

rootfs_valid() {  # complete and built with the current recipe?
  local root="$1"
  [ -f "$root/$STAMP_NAME" ] && [ "$(cat "$root/$STAMP_NAME")" = "$KEY" ] \
    && [ -x "$root${VENV_IN_ROOTFS}/bin/python" ] \
    && compgen -G "$root${VENV_IN_ROOTFS}/lib/python*/site-packages/tvm/lib/libtvm_runtime.so" >/dev/null
}

# Runs a command inside the rootfs (scripts/emu_chroot.sh, the one chroot recipe) in a private mount + PID
# namespace: the mounts vanish with the namespace, even if this script is killed.
in_chroot() {
  local root="$1"; shift
  unshare --mount --pid --fork --kill-child --propagation private -- \
    /bin/sh "$SCRIPT_DIR/emu_chroot.sh" "$root" -- /usr/bin/env -i PATH="$CHROOT_PATH" HOME=/root LANG=C.UTF-8 "$@"
}

# ---------------------------------------------------------------------------------------------
# Build steps
# ---------------------------------------------------------------------------------------------
download_wheels() {
  local dest="${EMU_DIR}/wheels-${KEY}"
  if [ -f "$dest/.complete" ]; then echo "$dest"; return; fi
  command -v "$HOST_PYTHON" >/dev/null || die "host Python '$HOST_PYTHON' not found (set LAAQ_HOST_PYTHON)"
  "$HOST_PYTHON" -m pip --version >/dev/null 2>&1 \
    || die "'$HOST_PYTHON -m pip' does not work; set LAAQ_HOST_PYTHON to a Python with pip"
  log "downloading aarch64 wheels: ${PIP_PACKAGES[*]}"
  local t0; t0=$(now)
  safe_rm "$dest.partial"
  mkdir -p "$dest.partial"
  # shellcheck disable=SC2086
  "$HOST_PYTHON" -m pip download -q --disable-pip-version-check --dest "$dest.partial" \
      --platform manylinux_2_28_aarch64 --python-version "$PY_VERSION" --implementation cp \
      --only-binary=:all: ${LAAQ_PIP_ARGS:-} "${PIP_PACKAGES[@]}" >&2 \
    || die "pip download of the aarch64 wheels failed (network to PyPI? LAAQ_PIP_ARGS for a mirror)"
  touch "$dest.partial/.complete"
  safe_rm "$dest"
  mv "$dest.partial" "$dest"
  log "wheels downloaded in $(( $(now) - t0 )) s ($(du -sh "$dest" | cut -f1))"
  echo "$dest"
}

build_rootfs() {  # builds into $1 (which must not exist)
  local dir="$1" t0 wheels
  local -a quiet_opt=()
  [ "$QUIET" = 1 ] && quiet_opt=(--quiet)
  wheels="$(download_wheels)"

  log "debootstrapping arm64 Debian $SUITE with mmdebstrap (a few minutes under qemu)"
  t0=$(now)
  # In a private mount namespace: the proc/sys/dev mounts mmdebstrap makes inside the target
  # vanish with it, even when it is killed midway (they would otherwise stay on the host).
  unshare --mount --propagation private -- \
  mmdebstrap --arch=arm64 --variant=essential --include="$DEB_INCLUDE" \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-include=/usr/share/locale/locale.alias' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    "${quiet_opt[@]}" \
    "$SUITE" "$dir" "$MIRROR" >&2 \
    || die "mmdebstrap failed (network to $MIRROR? set LAAQ_DEBIAN_MIRROR)"
  log "mmdebstrap done in $(( $(now) - t0 )) s"

  log "installing ${PIP_PACKAGES[*]} into ${VENV_IN_ROOTFS} (offline, under qemu)"
  t0=$(now)
  mkdir -p "$dir/opt/wheels"
  cp "$wheels"/*.whl "$dir/opt/wheels/"
  in_chroot "$dir" python3 -m venv "$VENV_IN_ROOTFS"
  in_chroot "$dir" "$VENV_IN_ROOTFS/bin/python" -m pip install -q --no-index --no-cache-dir \
    --disable-pip-version-check --find-links /opt/wheels "${PIP_PACKAGES[@]}" >&2
  rm -rf "$dir/opt/wheels"
  log "venv ready in $(( $(now) - t0 )) s"

  # Runtime-only TVM: the device never compiles. libtvm_compiler.so is ~250 MB and slows
  # `import tvm` under qemu ~3x; TVM_USE_RUNTIME_LIB=1 makes tvm load libtvm_runtime.so only.
  local site; site="$(echo "$dir${VENV_IN_ROOTFS}"/lib/python3*/site-packages)"
  rm -f "$site/tvm/lib/libtvm_compiler.so" "$site/tvm/lib/libtvm_runtime_cuda.so"
  rm -rf "$site/tvm/lib64/cmake" "$site/tvm/include" "$site/tvm/3rdparty" "$site/tvm_ffi/include"
  log "checking the device-side runtime"
  in_chroot "$dir" env TVM_USE_RUNTIME_LIB=1 "$VENV_IN_ROOTFS/bin/python" -c \
    'import platform, tvm, tvm.rpc, tvm.exec.rpc_server; assert platform.machine() == "aarch64"; print("tvm", tvm.__version__, "on", platform.machine())' >&2 \
    || die "the runtime-only TVM does not import inside the rootfs"

  rm -rf "$dir/var/cache/apt/archives/"*.deb "$dir/var/lib/apt/lists/"* "$dir/tmp/"* 2>/dev/null || true
  echo "$KEY" > "$dir/$STAMP_NAME"
}

make_tarball() {  # $1: complete rootfs dir
  log "writing $TARBALL"
  local t0; t0=$(now)
  rm -f "$TARBALL.partial"
  tar -C "$1" --numeric-owner --one-file-system -cf - . | zstd -q -T0 -6 -o "$TARBALL.partial"
  mv "$TARBALL.partial" "$TARBALL"
  # Older recipes' tarballs are dead weight.
  find "$EMU_DIR" -maxdepth 1 -name 'rootfs-*.tar.zst' ! -name "$(basename "$TARBALL")" -delete
  log "tarball written in $(( $(now) - t0 )) s ($(du -h "$TARBALL" | cut -f1))"
}

unpack_tarball() {  # $1: destination dir (must not exist)
  log "unpacking cached $TARBALL"
  local t0; t0=$(now)
  mkdir -p "$1"
  zstd -q -dc "$TARBALL" | tar -C "$1" --numeric-owner -xpf -
  log "unpacked in $(( $(now) - t0 )) s"
}

# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------
# The whole flow is one function called on the last line: bash has then read the entire file
# before running anything, so editing the script during a (minutes-long) build cannot corrupt it.
main() {
  if [ "$MODE" = check ]; then
    ensure_host || exit 1
    if rootfs_valid "$ROOTFS"; then echo "$ROOTFS"; exit 0; fi
    log "no valid rootfs at $ROOTFS"; exit 1
  fi

  ensure_host

  # Fast path (no lock needed): everything in place.
  if [ "$MODE" = ensure ] && rootfs_valid "$ROOTFS"; then
    echo "$ROOTFS"; exit 0
  fi

  is_root || { echo "[emu_rootfs] building the rootfs needs root (mmdebstrap, chroot); rerun as root:" >&2
               echo "  sudo $0" >&2; exit 3; }

  mkdir -p "$EMU_DIR"
  exec 9>"$EMU_DIR/.lock"
  if ! flock -n 9; then
    log "another build holds $EMU_DIR/.lock; waiting"
    flock 9
  fi

  if [ "$MODE" = rebuild ]; then
    log "--rebuild: discarding the cached rootfs and tarball"
    retire "$ROOTFS"
    rm -f "$TARBALL"
  fi

  if ! rootfs_valid "$ROOTFS"; then
    T_ALL=$(now)
    # Leftovers of a killed run: never used, always rebuilt.
    for d in "$EMU_DIR"/rootfs.partial "$EMU_DIR"/rootfs.trash.*; do
      if [ -e "$d" ]; then log "removing leftover $d"; safe_rm "$d"; fi
    done
    if [ -e "$ROOTFS" ]; then
      log "$ROOTFS is incomplete or from another recipe; rebuilding it"
      retire "$ROOTFS"
    fi
    PARTIAL="$EMU_DIR/rootfs.partial"
    built=0
    if [ -f "$TARBALL" ]; then
      if unpack_tarball "$PARTIAL" && rootfs_valid "$PARTIAL"; then
        :
      else
        log "cached tarball is damaged; discarding it"
        rm -f "$TARBALL"; safe_rm "$PARTIAL"
      fi
    fi
    if [ ! -e "$PARTIAL" ]; then
      build_rootfs "$PARTIAL"
      built=1
    fi
    rootfs_valid "$PARTIAL" || die "the rootfs in $PARTIAL failed its final check"
    if [ "$built" = 1 ]; then make_tarball "$PARTIAL"; fi
    mv "$PARTIAL" "$ROOTFS"
    log "rootfs ready in $(( $(now) - T_ALL )) s: $ROOTFS ($(du -sh --one-file-system "$ROOTFS" | cut -f1))"
  fi

  # Handlers registered without the F (fix-binary) flag look for the interpreter inside the chroot.
  if needs_qemu && ! grep -q '^flags:.*F' /proc/sys/fs/binfmt_misc/qemu-aarch64; then
    interp="$(sed -n 's/^interpreter //p' /proc/sys/fs/binfmt_misc/qemu-aarch64)"
    if [ -n "$interp" ] && [ ! -x "$ROOTFS$interp" ]; then
      log "binfmt handler lacks the F flag; copying $interp into the rootfs"
      mkdir -p "$(dirname "$ROOTFS$interp")"
      cp "$interp" "$ROOTFS$interp"
    fi
  fi

  echo "$ROOTFS"
}

main "$@"; exit $?
