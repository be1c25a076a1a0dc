#!/usr/bin/env bash
# Runs the README's two commands as a new user would: in a minimal Debian 12 root made by
# debootstrap, on a clean clone of the current commit, with nothing installed beforehand.
# CUDA is off inside (the toolkit is not a Debian package). Prints pass/fail and the time of
# each command; exits non-zero when either fails. Not part of CI (it takes about half an
# hour on 2 cores); run it before resolving anything that touches dependencies or scripts.
#
#   scripts/fresh_machine_check.sh [demo|test]...   (default: both, demo first)
#
# The bare root is built once and cached as a tarball (TESSERA_FRESH_CACHE, default
# /var/cache/tessera-fresh); every run unpacks it anew under TESSERA_FRESH_DIR (default
# build-fresh/), so no run sees what an earlier one installed. Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
suite=bookworm
cache_dir=${TESSERA_FRESH_CACHE:-/var/cache/tessera-fresh}
work=${TESSERA_FRESH_DIR:-$repo/build-fresh}
root="$work/root"
commands=("$@")
[ ${#commands[@]} -gt 0 ] || commands=(demo test)
for c in "${commands[@]}"; do
  case "$c" in demo | test) ;; *) echo "fresh_machine_check: unknown command '$c' (demo or test)" >&2; exit 2 ;; esac
done

if [ "$(id -u)" -ne 0 ]; then
  echo "fresh_machine_check: needs root (debootstrap, chroot and mounts); run it with sudo" >&2
  exit 2
fi

# The Debian mirror this machine already uses: the check must reach the same registry.
mirror=${TESSERA_DEBIAN_MIRROR:-}
if [ -z "$mirror" ] && [ -f /etc/apt/sources.list.d/debian.sources ]; then
  mirror=$(awk '/^URIs:/ && $2 !~ /security/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)
fi
if [ -z "$mirror" ] && [ -f /etc/apt/sources.list ]; then
  mirror=$(awk '$1 == "deb" && $3 == "'"$suite"'" {print $2; exit}' /etc/apt/sources.list)
fi
if [ -z "$mirror" ]; then
  echo "fresh_machine_check: no Debian mirror found in /etc/apt; set TESSERA_DEBIAN_MIRROR" >&2
  exit 2
fi

if ! command -v debootstrap >/dev/null; then
  echo "fresh_machine_check: installing debootstrap"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
fi

tarball="$cache_dir/debian-$suite-minbase.tar"
if [ ! -f "$tarball" ]; then
  echo "fresh_machine_check: building a bare Debian $suite root (cached in $tarball)"
  bare="$cache_dir/bare.tmp"
  rm -rf "$bare"
  mkdir -p "$bare"
  start=$SECONDS
  debootstrap --variant=minbase "$suite" "$bare" "$mirror" >"$cache_dir/debootstrap.log" 2>&1 || {
    echo "fresh_machine_check: debootstrap failed; see $cache_dir/debootstrap.log" >&2
    tail -5 "$cache_dir/debootstrap.log" >&2
    exit 1
  }
  tar -C "$bare" -cf "$tarball.tmp" .
  mv "$tarball.tmp" "$tarball"
  rm -rf "$bare"
  echo "fresh_machine_check: bare root ready in $((SECONDS - start)) s"
fi

unmount_all() {
  for m in dev/shm dev/pts dev sys proc; do
    if mountpoint -q "$root/$m" 2>/dev/null; then umount -l "$root/$m" || true; fi
  done
}
trap unmount_all EXIT
unmount_all
rm -rf "$root"
mkdir -p "$root"
tar -C "$root" -xf "$tarball"

# The same package sources as this machine (updates and security included), and its DNS.
if [ -f /etc/apt/sources.list.d/debian.sources ]; then
  cp /etc/apt/sources.list.d/debian.sources "$root/etc/apt/sources.list.d/"
  : >"$root/etc/apt/sources.list"
fi
cp /etc/resolv.conf "$root/etc/resolv.conf"

commit=$(git rev-parse HEAD)
if [ -n "$(git status --porcelain --untracked-files=no)" ]; then
  echo "fresh_machine_check: note: uncommitted changes are not checked, only commit ${commit:0:12}"
fi
git clone --quiet --no-hardlinks "$repo" "$root/work/tessera"
git -C "$root/work/tessera" checkout --quiet "$commit"

mount -t proc proc "$root/proc"
mount -t sysfs sys "$root/sys"
mount --bind /dev "$root/dev"
mount -t devpts devpts "$root/dev/pts" 2>/dev/null || mount --bind /dev/pts "$root/dev/pts"
mount -t tmpfs -o mode=1777 tmpfs "$root/dev/shm"  # MPI's shared-memory transport

declare -A script=([demo]=scripts/demo.sh [test]=scripts/test.sh)
failed=0
summary=()
for c in "${commands[@]}"; do
  log="$work/$c.log"
  echo "fresh_machine_check: $c: ${script[$c]} in a clean Debian $suite root (log: $log)"
  start=$SECONDS
  if chroot "$root" /usr/bin/env -i HOME=/root LANG=C.UTF-8 TERM=dumb \
      PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
      bash -c "cd /work/tessera && ${script[$c]}" </dev/null >"$log" 2>&1; then
    result=pass
  else
    result=FAIL
    failed=1
    tail -20 "$log" | sed "s/^/  $c | /"
  fi
  summary+=("$(printf '%-5s %-4s %4d s  %s' "$c" "$result" $((SECONDS - start)) "${script[$c]}")")
done

echo "fresh_machine_check: commit ${commit:0:12}, Debian $suite minbase, CUDA off"
printf '  %s\n' "${summary[@]}"
exit $failed
