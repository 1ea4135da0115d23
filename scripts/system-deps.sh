#!/usr/bin/env bash
# Installs the Debian packages the directory needs, when they are missing.
# Safe to run again: it asks apt only for what is not installed yet.
set -euo pipefail

packages=(postgresql-15 postgresql-15-postgis-3 postgresql-contrib redis-server python3-venv)
# nginx: the tests run deploy/nginx.conf.template in front of the API, as deployed.
packages+=(nginx)
# The Credit Commons reference node that the payment client is tested against
# (../shared/peers/credit-commons): PHP and a MariaDB of its own. Its start script
# installs these too, but misses php-xml, without which the node cannot start.
packages+=(php-cli php-mysql php-curl php-xml mariadb-server)
missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" \
        || missing+=("$package")
done
if ((${#missing[@]})); then
    echo "installing Debian packages: ${missing[*]}"
    sudo_cmd=()
    [[ $(id -u) -ne 0 ]] && sudo_cmd=(sudo)
    "${sudo_cmd[@]}" apt-get update -q
    DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -q --no-install-recommends \
        "${missing[@]}"
fi
