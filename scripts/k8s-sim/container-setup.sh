#!/bin/bash
# PID 1 of a container, before it becomes the container's command. podsim.py starts it as
#   ip netns exec xbsim-POD unshare --mount --uts --pid --fork --propagation private --mount-proc \
#     bash container-setup.sh BASE IMAGE HOSTS POD MOUNTS RO_ROOT UID GID SETPRIV_OPTS WORKDIR STARTED -- ARGV...
# so it runs as root in the pod's network namespace and in new mount, UTS and PID namespaces.
# It builds the container's root file system and execs ARGV in it:
#   - the "image": an overlay whose lower layer is the host's root file system (the host's
#     binaries: mariadbd, mariabackup, the mariadb client) and whose upper layer is a fresh tmpfs,
#     so writes stay in the container, as in a container's writable layer; the stand-ins of
#     image.py on top (/etc/mysql of the mariadb image, its entrypoint, xbagent);
#   - /etc/hosts and /etc/resolv.conf of the pod (the kubelet mounts /etc/hosts the same way);
#   - every volumeMount (MOUNTS: lines "SOURCE<TAB>PATH<TAB>ro|rw"), as bind mounts;
#   - readOnlyRootFilesystem: the root remounted read-only (the volumes stay as mounted);
#   - runAsUser/runAsGroup, allowPrivilegeEscalation and capabilities through setpriv.
set -euo pipefail
base=$1 img=$2 hosts=$3 pod=$4 mounts=$5 ro_root=$6 uid=$7 gid=$8 setpriv_opts=$9 workdir=${10} started=${11}
shift 11
[ "${1:-}" = -- ] && shift

hostname "$pod"
mount -t tmpfs -o mode=0755 xbsim "$base"
mkdir "$base/upper" "$base/work" "$base/root"
r=$base/root
mount -t overlay overlay -o "lowerdir=/,upperdir=$base/upper,workdir=$base/work" "$r"
mount --rbind /dev "$r/dev"
mount -t proc proc "$r/proc"
mount --rbind -o ro /sys "$r/sys" 2>/dev/null || mount --rbind /sys "$r/sys"
mount -t tmpfs -o mode=1777 tmpfs "$r/tmp"
mount -t tmpfs -o mode=0755 tmpfs "$r/run"
# The image's /run/mysqld and anonymous volume /var/lib/mysql, owned by its mysql user.
mkdir -p "$r/run/mysqld" "$r/var/lib/mysql"
mount -t tmpfs -o mode=0755 tmpfs "$r/var/lib/mysql"
chown mysql:mysql "$r/run/mysqld" "$r/var/lib/mysql"
# The image's /etc/mysql replaces the host's entirely.
mkdir -p "$r/etc/mysql"
mount -t tmpfs -o mode=0755 tmpfs "$r/etc/mysql"
cp -a "$img/etc-mysql/." "$r/etc/mysql/"
install -m 0755 "$img/docker-entrypoint.sh" "$r/usr/local/bin/docker-entrypoint.sh"
touch "$r/usr/local/bin/xbagent"
mount --bind -o ro "$img/xbagent" "$r/usr/local/bin/xbagent"
mount --bind "$hosts" "$r/etc/hosts"
mount --bind "$(dirname "$hosts")/resolv.conf" "$r/etc/resolv.conf"
printf '%s\n' "$pod" > "$r/etc/hostname"

while IFS=$'\t' read -r src dst mode; do
    [ -n "$src" ] || continue
    if [ -d "$src" ]; then mkdir -p "$r$dst"; else mkdir -p "$(dirname "$r$dst")"; touch "$r$dst"; fi
    mount --bind "$src" "$r$dst"
    if [ "$mode" = ro ]; then mount -o remount,bind,ro "$r$dst"; fi
done < "$mounts"

if [ "$ro_root" = 1 ]; then
    mount -o remount,bind,ro "$r"
fi
touch "$started"
# shellcheck disable=SC2086 # setpriv_opts is a list of options
exec chroot "$r" /usr/bin/setpriv --reuid="$uid" --regid="$gid" --clear-groups $setpriv_opts \
    /usr/bin/env -C "$workdir" -- "$@"
