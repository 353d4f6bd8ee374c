"""Stand-ins for what the manifests take from the image registry.example.com/xbagent-mariadb:10.11
(mariadb:10.11 with xbagent copied in). Everything else is the host's own binaries (Debian 12's
mariadbd, mariabackup, mariadb client, bash, coreutils). README.md lists the differences."""

import grp
import os
import pwd
import shutil

# The image's ENTRYPOINT; its CMD is ["mariadbd"].
ENTRYPOINT = "docker-entrypoint.sh"
# The image's ENV that matters here.
ENV = {"LANG": "C.UTF-8"}

# /etc/mysql of the mariadb:10.11 image (Ubuntu's mariadb packages as the image configures them):
# my.cnf includes conf.d (where the StatefulSet mounts its emptyDir) and mariadb.conf.d; no
# bind-address (the image comments it out); host-cache-size=0 and skip-name-resolve (05-skipcache).
MY_CNF = """[client-server]
socket = /run/mysqld/mysqld.sock
port = 3306
!includedir /etc/mysql/conf.d/
!includedir /etc/mysql/mariadb.conf.d/
"""
SERVER_CNF = """[server]
[mysqld]
pid-file = /run/mysqld/mysqld.pid
basedir = /usr
datadir = /var/lib/mysql
expire_logs_days = 10
character-set-server = utf8mb4
collation-server = utf8mb4_general_ci
[mariadb]
[mariadb-10.11]
"""
SKIPCACHE_CNF = """[mariadb]
host-cache-size=0
skip-name-resolve
"""
CLIENT_CNF = """[client]
default-character-set = utf8mb4
"""

# The image's docker-entrypoint.sh, reduced to the path these manifests take: the mariadb
# container's args start with "-", so they are mariadbd's options; as root, the data directory
# is given to mysql and the script re-runs itself as mysql (the image uses gosu; setpriv here);
# an uninitialised data directory (no DATADIR/mysql) is initialised with mariadb-install-db,
# a temporary server on the socket only sets the root password (MARIADB_ROOT_PASSWORD, required)
# for root@localhost and creates root@'%' (MARIADB_ROOT_HOST defaults to %), without binary
# logging; then mariadbd is exec'ed with the container's args. Not emulated: MARIADB_DATABASE/
# USER, /docker-entrypoint-initdb.d, time zone tables, the healthcheck user, upgrades.
ENTRYPOINT_SH = r"""#!/bin/bash
set -eo pipefail
note() { echo "$(date -u +%FT%TZ) [Entrypoint stand-in]: $*"; }
if [ "${1:0:1}" = '-' ]; then set -- mariadbd "$@"; fi
if [ "$1" != mariadbd ] && [ "$1" != mysqld ]; then exec "$@"; fi
DATADIR=$("$@" --verbose --help 2>/dev/null | awk '$1 == "datadir" && /^[^ \t]/ { print $2; exit }')
SOCKET=$("$@" --verbose --help 2>/dev/null | awk '$1 == "socket" && /^[^ \t]/ { print $2; exit }')
if [ "$(id -u)" = 0 ]; then
    mkdir -p "$DATADIR"
    find "$DATADIR" \! -user mysql -exec chown mysql:mysql '{}' +
    note "switching to dedicated user 'mysql'"
    exec setpriv --reuid=mysql --regid=mysql --init-groups "$BASH_SOURCE" "$@"
fi
if [ ! -d "$DATADIR/mysql" ]; then
    if [ -z "${MARIADB_ROOT_PASSWORD:-}" ]; then
        note "ERROR: Database is uninitialized and password option is not specified"
        exit 1
    fi
    note "initializing database files in $DATADIR"
    mariadb-install-db --datadir="$DATADIR" --rpm --auth-root-authentication-method=normal \
        --skip-test-db --default-time-zone=SYSTEM --enforce-storage-engine= --skip-log-bin \
        --expire-logs-days=0 --loose-innodb_buffer_pool_load_at_startup=0 \
        --loose-innodb_buffer_pool_dump_at_shutdown=0
    "$@" --skip-networking --default-time-zone=SYSTEM --socket="$SOCKET" --wsrep_on=OFF \
        --expire-logs-days=0 --skip-slave-start --loose-innodb_buffer_pool_load_at_startup=0 &
    pid=$!
    for i in $(seq 60); do
        if mariadb --protocol=socket -uroot -hlocalhost --socket="$SOCKET" -e 'SELECT 1' >/dev/null 2>&1; then break; fi
        sleep 1
    done
    pw=${MARIADB_ROOT_PASSWORD//\\/\\\\}
    pw=${pw//\'/\\\'}
    mariadb --protocol=socket -uroot -hlocalhost --socket="$SOCKET" --binary-mode <<SQL
SET @@SESSION.SQL_LOG_BIN=0;
SET @@SESSION.SQL_MODE=REPLACE(@@SESSION.SQL_MODE, 'NO_BACKSLASH_ESCAPES', '');
DROP USER IF EXISTS root@'127.0.0.1', root@'::1';
EXECUTE IMMEDIATE CONCAT('DROP USER IF EXISTS root@\'', @@hostname,'\'');
SET PASSWORD FOR 'root'@'localhost'= PASSWORD('$pw');
CREATE USER 'root'@'%' IDENTIFIED BY '$pw';
GRANT ALL ON *.* TO 'root'@'%' WITH GRANT OPTION;
GRANT PROXY ON ''@'%' TO 'root'@'%' WITH GRANT OPTION;
SQL
    kill -TERM "$pid"
    wait "$pid" || true
    note "MariaDB init process done. Ready for start up."
fi
exec "$@"
"""


def map_ids(uid, gid):
    """The image's mysql user and group are 999:999; the host's mysql user stands in for them."""
    if uid == 999:
        uid = pwd.getpwnam("mysql").pw_uid
    if gid == 999:
        gid = grp.getgrnam("mysql").gr_gid
    return uid, gid


def home_of(uid):
    """HOME in the image: /root, and the mysql user's /var/lib/mysql."""
    return "/root" if uid == 0 else ("/var/lib/mysql" if uid == pwd.getpwnam("mysql").pw_uid else "/")


def build(d, xbagent_bin):
    etc = os.path.join(d, "etc-mysql")
    shutil.rmtree(etc, ignore_errors=True)
    for sub in ("conf.d", "mariadb.conf.d"):
        os.makedirs(os.path.join(etc, sub))
    files = {
        "my.cnf": MY_CNF,
        "mariadb.conf.d/50-server.cnf": SERVER_CNF,
        "mariadb.conf.d/05-skipcache.cnf": SKIPCACHE_CNF,
        "mariadb.conf.d/50-client.cnf": CLIENT_CNF,
    }
    for name, text in files.items():
        with open(os.path.join(etc, name), "w") as f:
            f.write(text)
    with open(os.path.join(d, "docker-entrypoint.sh"), "w") as f:
        f.write(ENTRYPOINT_SH)
    os.chmod(os.path.join(d, "docker-entrypoint.sh"), 0o755)
    # A copy, so that a rebuild of target/ during a run does not change the "image".
    shutil.copy2(xbagent_bin, os.path.join(d, "xbagent"))
    return d
