#!/usr/bin/env bash
# Installs the Debian packages the local stack needs when they are missing and their URL is not given.
set -euo pipefail
missing=()
if [ -z "${DATABASE_URL:-}" ] && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then missing+=(postgresql); fi
if [ -z "${REDIS_URL:-}" ] && ! command -v redis-server >/dev/null 2>&1; then missing+=(redis-server); fi
# clamd (malware scanning of files) from clamav-daemon, unless a scanner's address is given (CLAMD_ADDRESS)
if [ -z "${CLAMD_ADDRESS:-}" ] && ! [ -x /usr/sbin/clamd ]; then missing+=(clamav-daemon); fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]} ..." >&2
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
  # the Debian package starts its own cluster; the project runs its own server, so leave that one stopped
  if [[ " ${missing[*]} " == *" postgresql "* ]]; then $SUDO pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main stop 2>/dev/null || true; fi
  # the Debian package may start its own clamd and freshclam (which would download signatures); the project runs
  # its own clamd with the small database it ships (devstack/clamd.py), so leave those stopped
  if [[ " ${missing[*]} " == *" clamav-daemon "* ]]; then
    $SUDO systemctl disable --now clamav-daemon clamav-freshclam >/dev/null 2>&1 || true
  fi
fi
