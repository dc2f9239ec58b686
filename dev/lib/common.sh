# Shared by dev/demo, dev/test and .ci/run: install what is missing, build, and run a throwaway
# PostgreSQL under a temp folder. Source it; it defines functions only.

ADP_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"

adp_log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

# Debian packages the build and the tests need. Installed only when missing.
ADP_APT_PACKAGES=(libpq-dev libcurl4-openssl-dev libsystemd-dev zlib1g-dev postgresql pkg-config python3 curl iproute2 util-linux)

adp_install_packages() {
    local missing=()
    for p in "${ADP_APT_PACKAGES[@]}" "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    adp_log "installing ${missing[*]}"
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

adp_pg_bindir() {
    local d
    d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
    [ -n "$d" ] || { echo "no PostgreSQL server found under /usr/lib/postgresql" >&2; return 1; }
    echo "$d"
}

# Run a command as the PostgreSQL owner: ourselves, or 'postgres' when we are root
# (PostgreSQL refuses to run as root).
adp_as_pg() {
    if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

# adp_pg_start DIR PORT: initdb + start on 127.0.0.1:PORT and a socket in DIR. Exports PG* for
# clients and ADP_TEST_PG* for the tests. Trust auth on loopback only: it is a throwaway.
adp_pg_start() {
    local dir="$1" port="$2" bin
    # Tests trade durability for speed; ADP_PG_DURABLE=1 (benchmarks) keeps PostgreSQL's defaults.
    local durability="-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    [ "${ADP_PG_DURABLE:-0}" = 1 ] && durability=""
    bin=$(adp_pg_bindir) || return 1
    mkdir -p "$dir"
    [ "$(id -u)" -eq 0 ] && chown postgres: "$dir"
    adp_as_pg "$bin/initdb" -D "$dir/data" -U postgres -A trust --no-sync -E UTF8 >"$dir/initdb.log" 2>&1 \
        || { cat "$dir/initdb.log" >&2; return 1; }
    adp_as_pg "$bin/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t 60 start \
        -o "-c listen_addresses=127.0.0.1 -p $port -k $dir $durability -c max_connections=200" \
        >/dev/null || { cat "$dir/postgres.log" >&2; return 1; }
    export PGHOST=127.0.0.1 PGPORT="$port" PGUSER=postgres PGDATABASE=postgres
    export ADP_TEST_PGHOST=127.0.0.1 ADP_TEST_PGPORT="$port" ADP_TEST_PGUSER=postgres ADP_TEST_PGDATA="$dir/data" ADP_TEST_PGBIN="$bin"
}

adp_pg_stop() {
    local dir="$1" bin
    bin=$(adp_pg_bindir) || return 0
    [ -d "$dir/data" ] && adp_as_pg "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1 || true
}

# The release build the .deb ships and bench/run measures, with one set of flags (so neither
# rebuilds the other's .build-release, and the figures are those of the installed binaries): the
# Swift runtime linked statically; full RELRO and BIND_NOW, as Debian's hardening has them.
# (GNU ld's -z pack-relative-relocs would save each process about 0.7 MiB: the relocations the loader
# reads at start. But ld.bfd 2.40 makes no GNU_RELRO segment for these binaries, and ld.lld keeps
# every conformance record alive and with them the ICU data: 80 MB binaries. Measured.)
ADP_RELEASE_BUILD=(swift build -c release --static-swift-stdlib --scratch-path .build-release
    -Xlinker -z -Xlinker relro -Xlinker -z -Xlinker now)

# The folder of the release binaries (built or not).
adp_release_bindir() {
    (cd "$ADP_ROOT" && swift build -c release --scratch-path .build-release --show-bin-path)
}

# Build (incremental) and print the folder of the release binaries. Build output goes to stderr.
# A hung optimiser must fail the caller, not stall CI (SWIFT-LINUX-NOTES: swiftc -O once hung).
adp_release_build() {
    (cd "$ADP_ROOT" && timeout 1500 "${ADP_RELEASE_BUILD[@]}" >&2) || return 1
    adp_release_bindir
}

adp_free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}
