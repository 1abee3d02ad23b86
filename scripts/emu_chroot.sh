#!/bin/sh
# The one way into the emulated board: mount what the arm64 chroot needs, bind host folders, run a command.
#
# Runs as PID 1 of a private mount + PID namespace, so every mount and process vanishes with it:
#   unshare --mount --pid --fork --kill-child --propagation private -- \
#     /bin/sh scripts/emu_chroot.sh [--watch-stdin] ROOTFS [HOST_DIR INSIDE]... -- COMMAND [ARG]...
# Used by the board's RPC server (harness/devices/emulated.py), by programs run on the board without RPC
# (harness/devices/emulated_exec.py) and by the rootfs build (scripts/emu_rootfs.sh).
#   ROOTFS           the cached arm64 Debian tree
#   HOST_DIR INSIDE  bind-mount a host folder at INSIDE (callers keep INSIDE under the private /tmp,
#                    so the cached rootfs is never written to)
#   --watch-stdin    run COMMAND in the background and kill it when this script's stdin reaches EOF:
#                    the harness holds the pipe's other end, so a harness that dies (even by SIGKILL)
#                    never leaves an orphan server
set -e
watch=0
if [ "$1" = "--watch-stdin" ]; then watch=1; shift; fi
r="$1"; shift
mount -t proc proc "$r/proc"
mount --rbind /sys "$r/sys"
mount --rbind /dev "$r/dev"
mount -t tmpfs -o size=1g tmpfs "$r/tmp"
while [ "$1" != "--" ]; do mkdir -p "$r$2"; mount --bind "$1" "$r$2"; shift 2; done
shift
if [ "$watch" = 0 ]; then exec chroot "$r" "$@" </dev/null; fi
exec 3<&0
chroot "$r" "$@" </dev/null &
server=$!
( cat <&3 >/dev/null; kill -KILL "$server" 2>/dev/null ) &
exec 3<&-
wait "$server"
