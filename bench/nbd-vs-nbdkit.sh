#!/usr/bin/env bash
# Compare tandem's NBD export against nbdkit's file plugin, using fio's nbd
# engine as the client for both. See bench/README.md for the details.
#
# Environment:
#   TANDEM_BIN         tandem binary (default: <repo>/target/release/tandem)
#   BENCH_DIR          parent directory for the scratch dir (default /var/tmp)
#   BENCH_SIZE         size of each backing file, e.g. 256M, 1G (default 1G)
#   BENCH_RUNTIME      seconds per fio run (default 20)
#   BENCH_REPS         runs per workload and server; the best one is kept (default 1)
#   BENCH_KEEP=1       keep the scratch dir and copy results to bench/results/LAST/
#   BENCH_FAKE_TANDEM=1  self-test of this script: serve the "tandem" file with a
#                      second nbdkit instead of tandem (no tandem binary needed)
set -euo pipefail

PROG=nbd-vs-nbdkit
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH_SRC="$ROOT/bench"

BENCH_DIR=${BENCH_DIR:-/var/tmp}
BENCH_SIZE=${BENCH_SIZE:-1G}
BENCH_RUNTIME=${BENCH_RUNTIME:-20}
BENCH_REPS=${BENCH_REPS:-1}
BENCH_KEEP=${BENCH_KEEP:-0}
BENCH_FAKE_TANDEM=${BENCH_FAKE_TANDEM:-0}
TANDEM_BIN=${TANDEM_BIN:-$ROOT/target/release/tandem}

# Workloads: name, then the fio options that make it. Every run also gets the
# common options in run_fio below.
WORKLOADS=(
    "randwrite-4k-qd1-fsync --rw=randwrite --bs=4k --iodepth=1 --numjobs=1 --fsync=1"
    "randwrite-4k-qd32 --rw=randwrite --bs=4k --iodepth=32 --numjobs=1"
    "seqwrite-1m-qd8 --rw=write --bs=1m --iodepth=8 --numjobs=1"
    "randread-4k-qd32 --rw=randread --bs=4k --iodepth=32 --numjobs=1"
)

log() { printf '%s [%s] %s\n' "$PROG" "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 1; }

# ---------------------------------------------------------------------------
# Preconditions
# ---------------------------------------------------------------------------

check_tools() {
    local missing=() pkgs=() entry tool pkg
    for entry in fio:fio nbdkit:nbdkit nbdinfo:libnbd-bin python3:python3; do
        tool=${entry%%:*}
        pkg=${entry#*:}
        if ! command -v "$tool" >/dev/null 2>&1; then
            missing+=("$tool")
            pkgs+=("$pkg")
        fi
    done
    if ((${#missing[@]})); then
        die "missing tool(s): ${missing[*]} -- install with: apt-get install ${pkgs[*]}"
    fi
    if ! fio --enghelp=nbd >/dev/null 2>&1; then
        die "this fio has no 'nbd' ioengine (it must be built with libnbd; Debian/Ubuntu's fio package is)"
    fi
    if ! nbdkit file --dump-plugin >/dev/null 2>&1; then
        die "nbdkit's file plugin is not available (package nbdkit)"
    fi
    if [[ $BENCH_FAKE_TANDEM != 1 ]]; then
        [[ -x $TANDEM_BIN ]] ||
            die "tandem binary not found at $TANDEM_BIN -- build it with \`cargo build --release --bin tandem\` or set TANDEM_BIN"
    fi
    [[ $BENCH_RUNTIME =~ ^[1-9][0-9]*$ ]] || die "BENCH_RUNTIME must be a positive integer (seconds), got '$BENCH_RUNTIME'"
    [[ $BENCH_REPS =~ ^[1-9][0-9]*$ ]] || die "BENCH_REPS must be a positive integer, got '$BENCH_REPS'"
}

# "256M", "1G", "1GiB", "1073741824" -> bytes (binary units).
size_to_bytes() {
    local s=$1
    s=${s%B}
    s=${s%i}
    numfmt --from=iec "$s" 2>/dev/null || die "cannot parse BENCH_SIZE='$1' (use e.g. 256M or 1G)"
}

# ---------------------------------------------------------------------------
# Scratch dir, processes, cleanup
# ---------------------------------------------------------------------------

WORK=""
SERVER_PIDS=()

cleanup() {
    local rc=$? pid i
    set +e
    for pid in "${SERVER_PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null
    done
    for pid in "${SERVER_PIDS[@]}"; do
        for ((i = 0; i < 50; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            log "pid $pid ignored SIGTERM, sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null
        fi
        wait "$pid" 2>/dev/null
    done
    if [[ -n $WORK && -d $WORK ]]; then
        if [[ $BENCH_KEEP == 1 ]]; then
            log "keeping scratch dir $WORK"
        else
            rm -rf -- "$WORK"
        fi
    fi
    if ((rc != 0)); then
        log "failed (exit status $rc)"
    fi
    exit "$rc"
}

# Wait until an NBD URI answers; fail early if the server process died.
wait_for_nbd() {
    local uri=$1 pid=$2 what=$3 i
    for ((i = 0; i < 300; i++)); do
        if nbdinfo --size "$uri" >/dev/null 2>&1; then
            return 0
        fi
        kill -0 "$pid" 2>/dev/null || die "$what exited before serving $uri (see its log in $WORK)"
        sleep 0.1
    done
    die "$what did not answer on $uri within 30 s"
}

# start_nbdkit LABEL SOCKET IMAGE -- serve IMAGE on a unix socket.
start_nbdkit() {
    local label=$1 sock=$2 img=$3
    nbdkit -f -U "$sock" file file="$img" >"$WORK/$label.log" 2>&1 &
    SERVER_PIDS+=("$!")
    wait_for_nbd "nbd+unix:///?socket=$sock" "$!" "nbdkit ($label)"
}

# ---------------------------------------------------------------------------
# tandem start-up.
#
# THIS IS THE PART TO ADJUST if tandem's command line changes. Contract: the
# backing file $WORK/tandem.img already exists, filled with the same data as
# nbdkit's; on return TANDEM_URI must hold an NBD URI that fio/nbdinfo can
# connect to, and every process started must be appended to SERVER_PIDS so
# that cleanup stops it.
#
# Flow (docs/resource-files.md, docs/admin-socket.md): blockd finds an existing
# backing file without tandem metadata and leaves the resource down, so we run
# `tandem local create-md` (metadata goes over the end of the file, the data
# at the start is kept) and then `tandem local up`. blockd logs go to
# $WORK/tandem-blockd.log; TANDEM_LOG (error..trace) sets their level.
#
# With BENCH_FAKE_TANDEM=1 a second nbdkit serves tandem.img instead. That is a
# self-test of this script (plumbing, result collection, table), not a
# measurement of tandem.
# ---------------------------------------------------------------------------

TANDEM_URI=""
EXPORT_SIZE=0   # bytes fio uses on both exports; set in main
TANDEM_RESOURCE=bench

# tandem local status --json -> nbd_uri of volume 0 of $TANDEM_RESOURCE, or a
# message on stderr and exit status 1 when the resource is not up.
tandem_uri_from_status() {
    python3 -c '
import json, sys
name = sys.argv[1]
d = json.load(sys.stdin)
res = [r for r in d.get("resources", []) if r.get("name") == name]
if not res:
    sys.exit(f"no resource {name!r} in tandem status")
r = res[0]
if r.get("state") != "up":
    state, error = r.get("state"), r.get("error")
    sys.exit(f"resource {name} is {state}: {error}")
vols = [v for v in r.get("volumes", []) if v.get("number") == 0]
if not vols or not vols[0].get("nbd_uri"):
    sys.exit(f"resource {name} has no volume 0 with an nbd_uri")
print(vols[0]["nbd_uri"])
' "$TANDEM_RESOURCE"
}

start_tandem() {
    local img="$WORK/tandem.img"

    if [[ $BENCH_FAKE_TANDEM == 1 ]]; then
        log "BENCH_FAKE_TANDEM=1: serving tandem.img with a second nbdkit (self-test)"
        start_nbdkit tandem-fake "$WORK/tandem-fake.sock" "$img"
        TANDEM_URI="nbd+unix:///?socket=$WORK/tandem-fake.sock"
        return 0
    fi

    mkdir -p "$WORK/conf" "$WORK/run"
    cat >"$WORK/conf/$TANDEM_RESOURCE.toml" <<EOF
name = "$TANDEM_RESOURCE"

[[volume]]
number = 0
backing = "$img"
EOF

    "$TANDEM_BIN" blockd --config-dir "$WORK/conf" --run-dir "$WORK/run" \
        >"$WORK/tandem-blockd.log" 2>&1 &
    local pid=$!
    SERVER_PIDS+=("$pid")

    local admin=("$TANDEM_BIN" local --admin-socket "$WORK/run/admin.sock")
    local i
    for ((i = 0; i < 300; i++)); do
        if "${admin[@]}" status --json >/dev/null 2>&1; then
            break
        fi
        kill -0 "$pid" 2>/dev/null ||
            die "tandem blockd exited during start-up; log:"$'\n'"$(tail -n 20 "$WORK/tandem-blockd.log")"
        sleep 0.1
    done
    ((i < 300)) || die "tandem blockd: admin socket did not answer within 30 s"

    local out
    out=$("${admin[@]}" create-md "$TANDEM_RESOURCE" 2>&1) ||
        die "tandem local create-md $TANDEM_RESOURCE failed: $out"
    out=$("${admin[@]}" up "$TANDEM_RESOURCE" 2>&1) ||
        die "tandem local up $TANDEM_RESOURCE failed: $out"

    TANDEM_URI=$("${admin[@]}" status --json | tandem_uri_from_status) ||
        die "could not get the NBD URI from \`tandem local status --json\`"

    wait_for_nbd "$TANDEM_URI" "$pid" "tandem blockd"
}

# ---------------------------------------------------------------------------
# fio
# ---------------------------------------------------------------------------

# run_fio NAME SERVER URI REP FIO-ARGS... -> $WORK/results/NAME-SERVER.repREP.json
run_fio() {
    local name=$1 server=$2 uri=$3 rep=$4
    shift 4
    local out="$WORK/results/$name-$server.rep$rep.json"
    local errlog="$WORK/results/$name-$server.rep$rep.log"
    log "fio $name on $server (run $rep/$BENCH_REPS, ${BENCH_RUNTIME}s)"
    # Flush dirty pages left by the previous run so its writeback does not
    # land on this one.
    sync
    if ! fio --name="$name" --ioengine=nbd --uri="$uri" \
        --size="$EXPORT_SIZE" --runtime="$BENCH_RUNTIME" --time_based \
        --direct=0 --group_reporting --output-format=json --output="$out" \
        "$@" >"$errlog" 2>&1; then
        cat "$errlog" >&2
        die "fio $name against $server failed (uri $uri)"
    fi
}

main() {
    check_tools
    local size_bytes
    size_bytes=$(size_to_bytes "$BENCH_SIZE")
    ((size_bytes >= 16 * 1048576 && size_bytes % 1048576 == 0)) ||
        die "BENCH_SIZE must be a whole number of MiB and at least 16M (got $BENCH_SIZE)"

    mkdir -p "$BENCH_DIR"
    local avail
    avail=$(df --output=avail -B1 "$BENCH_DIR" | tail -n 1)
    ((avail > 2 * size_bytes + 64 * 1048576)) ||
        die "not enough space in $BENCH_DIR for two $BENCH_SIZE files"

    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    WORK=$(mktemp -d "$BENCH_DIR/tandem-bench.XXXXXX")
    mkdir -p "$WORK/results"
    log "scratch dir: $WORK"

    # Both files live in the same directory, so on the same filesystem, and
    # hold the same random data, so reads return real (non-hole) blocks.
    log "writing $BENCH_SIZE of random data"
    dd if=/dev/urandom of="$WORK/nbdkit.img" bs=1M count=$((size_bytes / 1048576)) \
        iflag=fullblock conv=fsync status=none
    cp --sparse=never "$WORK/nbdkit.img" "$WORK/tandem.img"
    sync

    start_nbdkit nbdkit "$WORK/nbdkit.sock" "$WORK/nbdkit.img"
    local nbdkit_uri="nbd+unix:///?socket=$WORK/nbdkit.sock"
    start_tandem

    # tandem exports a little less than its backing file (metadata lives at
    # the end), so both servers are exercised over the smaller export size.
    local tsize nsize
    tsize=$(nbdinfo --size "$TANDEM_URI")
    nsize=$(nbdinfo --size "$nbdkit_uri")
    EXPORT_SIZE=$((tsize < nsize ? tsize : nsize))
    # keep it a multiple of 1 MiB so that every block size used fits evenly
    EXPORT_SIZE=$((EXPORT_SIZE / 1048576 * 1048576))
    ((EXPORT_SIZE > 0)) || die "export too small (tandem $tsize, nbdkit $nsize bytes)"
    log "export sizes: tandem $tsize, nbdkit $nsize; fio uses $EXPORT_SIZE bytes"
    log "tandem URI: $TANDEM_URI"

    local names=() w name rep server
    for w in "${WORKLOADS[@]}"; do
        read -r name _ <<<"$w"
        names+=("$name")
        for ((rep = 1; rep <= BENCH_REPS; rep++)); do
            # shellcheck disable=SC2086 # the option list is meant to be split
            run_fio "$name" tandem "$TANDEM_URI" "$rep" ${w#"$name"}
            # shellcheck disable=SC2086
            run_fio "$name" nbdkit "$nbdkit_uri" "$rep" ${w#"$name"}
        done
        for server in tandem nbdkit; do
            python3 "$BENCH_SRC/fio_table.py" best "$WORK/results/$name-$server.json" \
                "$WORK/results/$name-$server".rep*.json
        done
    done

    META_NBDKIT=$(nbdkit --version | head -n 1) META_URI=$TANDEM_URI \
        META_EXPORT=$EXPORT_SIZE BENCH_SIZE=$BENCH_SIZE BENCH_RUNTIME=$BENCH_RUNTIME \
        BENCH_REPS=$BENCH_REPS BENCH_FAKE_TANDEM=$BENCH_FAKE_TANDEM \
        python3 - "$WORK/results/meta.json" "${names[@]}" <<'EOF'
import json, os, platform, sys
e = os.environ
meta = {
    "workloads": sys.argv[2:],
    "nproc": len(os.sched_getaffinity(0)),
    "kernel": platform.release(),
    "nbdkit": e["META_NBDKIT"],
    "size": e["BENCH_SIZE"],
    "export_bytes": int(e["META_EXPORT"]),
    "runtime_s": int(e["BENCH_RUNTIME"]),
    "reps": int(e["BENCH_REPS"]),
    "fake_tandem": e["BENCH_FAKE_TANDEM"] == "1",
    "tandem_uri": e["META_URI"],
}
with open(sys.argv[1], "w") as f:
    json.dump(meta, f, indent=2)
EOF

    echo
    python3 "$BENCH_SRC/fio_table.py" table "$WORK/results" | tee "$WORK/results/table.md"

    if [[ $BENCH_KEEP == 1 ]]; then
        local keep="$ROOT/bench/results/LAST"
        rm -rf -- "$keep"
        mkdir -p "$keep"
        cp "$WORK"/results/* "$keep"/
        log "results copied to $keep"
    fi
}

main "$@"
