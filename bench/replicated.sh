#!/usr/bin/env bash
# Replicated tandem on loopback against nbdkit's single copy, plus the other
# figures of issue 4: bitmap resync after 1% of a volume changed, time from
# kill -9 of the primary to the first write acknowledged on the survivor, and
# blockd's RSS with 10 replicated resources. See bench/README.md.
#
# Environment:
#   TANDEM_BIN           tandem binary (default: <repo>/target/release/tandem)
#   BENCH_DIR            parent directory for the scratch dir (default /var/tmp)
#   BENCH_SIZE           size of each fio volume, e.g. 256M, 1G (default 1G)
#   BENCH_RUNTIME        seconds per fio run (default 20)
#   BENCH_RESYNC_SIZE    volume of the resync measurement (default 4G)
#   BENCH_FAILOVER_SIZE  volume of the failover measurement (default 256M)
#   BENCH_RSS_SIZE       size of each of the resources of the RSS measurement (default 1G)
#   BENCH_RSS_RESOURCES  how many resources for the RSS measurement (default 10)
#   BENCH_SECTIONS       which parts to run (default "fio resync failover rss")
#   BENCH_CONFIGS        which fio configurations (default "c2 a2 c3 dl2")
#   BENCH_SYNC_TIMEOUT   seconds allowed for any initial sync (default 900)
#   BENCH_KEEP=1         keep the scratch dir and copy results to
#                        bench/results/LAST-replicated/
#   TANDEM_LOG           blockd log level (error..trace)
set -euo pipefail

PROG=replicated
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH_SRC="$ROOT/bench"

BENCH_DIR=${BENCH_DIR:-/var/tmp}
BENCH_SIZE=${BENCH_SIZE:-1G}
BENCH_RUNTIME=${BENCH_RUNTIME:-20}
BENCH_RESYNC_SIZE=${BENCH_RESYNC_SIZE:-4G}
BENCH_FAILOVER_SIZE=${BENCH_FAILOVER_SIZE:-256M}
BENCH_RSS_SIZE=${BENCH_RSS_SIZE:-1G}
BENCH_RSS_RESOURCES=${BENCH_RSS_RESOURCES:-10}
BENCH_SECTIONS=${BENCH_SECTIONS:-fio resync failover rss}
BENCH_CONFIGS=${BENCH_CONFIGS:-c2 a2 c3 dl2}
BENCH_SYNC_TIMEOUT=${BENCH_SYNC_TIMEOUT:-900}
BENCH_KEEP=${BENCH_KEEP:-0}
TANDEM_BIN=${TANDEM_BIN:-$ROOT/target/release/tandem}

SECRET=bench-secret-1234
# The peer timeout blockd uses when the resource file does not set
# `timeout-ms` (docs/resource-files.md). The resource files below leave it
# unset, so this is the timeout in effect.
DEFAULT_TIMEOUT_MS=2000

# Same workloads as nbd-vs-nbdkit.sh: name, then the fio options that make it.
WORKLOADS=(
    "randwrite-4k-qd1-fsync --rw=randwrite --bs=4k --iodepth=1 --numjobs=1 --fsync=1"
    "randwrite-4k-qd32 --rw=randwrite --bs=4k --iodepth=32 --numjobs=1"
    "seqwrite-1m-qd8 --rw=write --bs=1m --iodepth=8 --numjobs=1"
    "randread-4k-qd32 --rw=randread --bs=4k --iodepth=32 --numjobs=1"
)

# fio configurations: id, protocol, node layout (one letter per node, node 0
# first: d = diskful, l = diskless), label. The NBD client always uses node 0.
CONFIGS=(
    "c2 C dd tandem 2 replicas, protocol C"
    "a2 A dd tandem 2 replicas, protocol A"
    "c3 C ddd tandem 3 replicas, protocol C"
    "dl2 C ldd tandem diskless client over 2 replicas (C)"
)

log() { printf '%s [%s] %s\n' "$PROG" "$(date +%H:%M:%S)" "$*" >&2; }
die() {
    printf '%s: error: %s\n' "$PROG" "$*" >&2
    # Inside a section, leave the reason where the report finds it.
    if [[ -n ${FAIL_FILE:-} ]]; then
        printf '%s\n' "$*" >"$FAIL_FILE"
    fi
    exit 1
}
now_ns() { date +%s%N; }
# ns_to_s NS -> seconds with 3 decimals
ns_to_s() { awk -v n="$1" 'BEGIN { printf "%.3f", n / 1e9 }'; }

# ---------------------------------------------------------------------------
# Preconditions
# ---------------------------------------------------------------------------

check_tools() {
    local missing=() pkgs=() entry tool pkg
    for entry in fio:fio nbdkit:nbdkit nbdinfo:libnbd-bin qemu-io:qemu-utils \
        python3:python3 numfmt:coreutils awk:gawk; do
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
    [[ -x $TANDEM_BIN ]] ||
        die "tandem binary not found at $TANDEM_BIN -- build it with \`cargo build --release --bin tandem\` or set TANDEM_BIN"
    [[ $BENCH_RUNTIME =~ ^[1-9][0-9]*$ ]] || die "BENCH_RUNTIME must be a positive integer (seconds), got '$BENCH_RUNTIME'"
    [[ $BENCH_RSS_RESOURCES =~ ^[1-9][0-9]*$ ]] || die "BENCH_RSS_RESOURCES must be a positive integer, got '$BENCH_RSS_RESOURCES'"
    [[ $BENCH_SYNC_TIMEOUT =~ ^[1-9][0-9]*$ ]] || die "BENCH_SYNC_TIMEOUT must be a positive integer (seconds), got '$BENCH_SYNC_TIMEOUT'"
    local s c known
    for s in $BENCH_SECTIONS; do
        [[ $s =~ ^(fio|resync|failover|rss)$ ]] ||
            die "unknown section '$s' in BENCH_SECTIONS (use fio, resync, failover, rss)"
    done
    for s in $BENCH_CONFIGS; do
        known=0
        for c in "${CONFIGS[@]}"; do
            [[ ${c%% *} == "$s" ]] && known=1
        done
        ((known)) || die "unknown configuration '$s' in BENCH_CONFIGS (use c2, a2, c3, dl2)"
    done
}

# "256M", "1G", "1GiB", "1073741824" -> bytes (binary units), whole MiB, >= 16M.
size_to_bytes() {
    local s=$1 b
    s=${s%B}
    s=${s%i}
    b=$(numfmt --from=iec "$s" 2>/dev/null) || die "cannot parse size '$1' (use e.g. 256M or 1G)"
    ((b >= 16 * 1048576 && b % 1048576 == 0)) ||
        die "sizes must be whole MiB and at least 16M (got $1)"
    echo "$b"
}

# ---------------------------------------------------------------------------
# Scratch dir, processes, cleanup
#
# Every process started is recorded in $WORK/pids/GROUP (one file per
# cluster, plus nbdkit), so that a section that fails in its subshell still
# leaves its processes where the parent finds and stops them.
# ---------------------------------------------------------------------------

WORK=""

track_pid() { echo "$2" >>"$WORK/pids/$1"; }

pid_alive() {
    local state
    [[ -r /proc/$1/stat ]] || return 1
    state=$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null) || return 1
    [[ -n $state && $state != Z && $state != X ]]
}

# stop_pids FILE: SIGTERM every pid in it, SIGKILL after 5 s, then drop the file.
stop_pids() {
    local file=$1 pid i pids=()
    [[ -f $file ]] || return 0
    mapfile -t pids <"$file"
    for pid in "${pids[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        for ((i = 0; i < 50; i++)); do
            pid_alive "$pid" || break
            sleep 0.1
        done
        if pid_alive "$pid"; then
            log "pid $pid ignored SIGTERM, sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        wait "$pid" 2>/dev/null || true
    done
    rm -f -- "$file"
}

cleanup() {
    local rc=$? f
    set +e
    if [[ -n $WORK && -d $WORK/pids ]]; then
        for f in "$WORK"/pids/*; do
            [[ -e $f ]] && stop_pids "$f"
        done
    fi
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
        pid_alive "$pid" || die "$what exited before serving $uri (see its log in $WORK)"
        sleep 0.1
    done
    die "$what did not answer on $uri within 30 s"
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# ---------------------------------------------------------------------------
# tandem clusters.
#
# THIS IS THE PART TO ADJUST if tandem's command line changes. A cluster CL
# is a directory $WORK/CL with one directory per node (n0, n1, ...), each
# with conf/, run/ and data/, and one `tandem blockd --node nI` process per
# node. Node layouts are strings with one letter per node: d = diskful,
# l = diskless. The replication addresses are 127.0.0.1 and free ports.
# ---------------------------------------------------------------------------

declare -A CL_LAYOUT CL_PORTS NODE_PID

node_dir() { echo "$WORK/$1/n$2"; }
node_sock() { echo "$WORK/$1/n$2/run/admin.sock"; }
# admin CL I ARGS...: tandem local against node I of CL
admin() {
    local cl=$1 i=$2
    shift 2
    "$TANDEM_BIN" local --admin-socket "$(node_sock "$cl" "$i")" "$@"
}
node_count() { echo "${#CL_LAYOUT[$1]}"; }
node_socks() {
    local cl=$1 i
    for ((i = 0; i < ${#CL_LAYOUT[$cl]}; i++)); do
        node_sock "$cl" "$i"
    done
}
log_tail() { tail -n "${3:-15}" "$(node_dir "$1" "$2")/blockd.log" 2>/dev/null | sed 's/^/    /'; }
all_log_tails() {
    local cl=$1 i
    for ((i = 0; i < ${#CL_LAYOUT[$cl]}; i++)); do
        echo "  blockd n$i log (last lines):"
        log_tail "$cl" "$i" "${2:-15}"
    done
}
status_py() { python3 "$BENCH_SRC/tandem_status.py" "$@"; }
# figure KEY VALUE: one line of $WORK/results/figures.txt, for the report
figure() { echo "$1 $2" >>"$WORK/results/figures.txt"; }

# new_cluster CL LAYOUT: directories and ports, nothing started.
new_cluster() {
    local cl=$1 layout=$2 i ports=()
    CL_LAYOUT[$cl]=$layout
    for ((i = 0; i < ${#layout}; i++)); do
        mkdir -p "$(node_dir "$cl" "$i")"/{conf,run,data}
        ports+=("$(free_port)")
    done
    CL_PORTS[$cl]="${ports[*]}"
}

# add_resource CL RES SIZE PROTOCOL [EXTRA]: the resource file on every node;
# EXTRA is more top-level options (TOML lines).
add_resource() {
    local cl=$1 res=$2 size=$3 proto=$4 extra=${5:-} layout ports i j f diskless
    layout=${CL_LAYOUT[$cl]}
    read -r -a ports <<<"${CL_PORTS[$cl]}"
    for ((i = 0; i < ${#layout}; i++)); do
        f="$(node_dir "$cl" "$i")/conf/$res.toml"
        {
            printf 'secret = "%s"\nprotocol = "%s"\n%s\n' "$SECRET" "$proto" "$extra"
            for ((j = 0; j < ${#layout}; j++)); do
                diskless=false
                [[ ${layout:j:1} == l ]] && diskless=true
                printf '[[node]]\nname = "n%d"\nid = %d\naddress = "127.0.0.1:%s"\ndiskless = %s\n\n' \
                    "$j" "$j" "${ports[j]}" "$diskless"
            done
            printf '[[volume]]\nnumber = 0\nsize = %s\n' "$size"
            if [[ ${layout:i:1} == d ]]; then
                printf 'backing = "%s"\n' "$(node_dir "$cl" "$i")/data/$res.img"
            fi
        } >"$f"
    done
}

# start_node CL I: start blockd for node I and wait for its admin socket.
start_node() {
    local cl=$1 i=$2 dir pid k
    dir=$(node_dir "$cl" "$i")
    "$TANDEM_BIN" blockd --node "n$i" --config-dir "$dir/conf" --run-dir "$dir/run" \
        >>"$dir/blockd.log" 2>&1 &
    pid=$!
    track_pid "$cl" "$pid"
    NODE_PID[$cl/$i]=$pid
    for ((k = 0; k < 300; k++)); do
        if admin "$cl" "$i" status --json >/dev/null 2>&1; then
            return 0
        fi
        pid_alive "$pid" ||
            die "tandem blockd n$i of $cl exited during start-up; log:"$'\n'"$(log_tail "$cl" "$i" 20)"
        sleep 0.1
    done
    die "tandem blockd n$i of $cl: admin socket did not answer within 30 s"
}

start_cluster() {
    local cl=$1 i
    for ((i = 0; i < ${#CL_LAYOUT[$cl]}; i++)); do
        start_node "$cl" "$i"
    done
}

stop_cluster() { stop_pids "$WORK/pids/$1"; }

# first diskful node of the cluster: the one whose data becomes the truth
source_node() {
    local layout=${CL_LAYOUT[$1]} i
    for ((i = 0; i < ${#layout}; i++)); do
        [[ ${layout:i:1} == d ]] && { echo "$i"; return 0; }
    done
    die "cluster $1 has no diskful node"
}

# initial_sync CL RES[,RES...]: every resource primary --force on the source
# node, then wait until every node is in sync. Prints the seconds it took.
initial_sync() {
    local cl=$1 resources=$2 src t0 out secs res list=()
    src=$(source_node "$cl")
    # shellcheck disable=SC2046 # one argument per node
    status_py wait-connected 60 "$resources" $(node_socks "$cl") >&2 ||
        die "nodes of $cl did not connect"$'\n'"$(all_log_tails "$cl")"
    IFS=, read -r -a list <<<"$resources"
    t0=$(now_ns)
    for res in "${list[@]}"; do
        out=$(admin "$cl" "$src" primary "$res" --force 2>&1) ||
            die "tandem local primary $res --force on n$src failed: $out"$'\n'"$(all_log_tails "$cl")"
    done
    # shellcheck disable=SC2046
    secs=$(status_py wait-sync --since-ns "$t0" "$BENCH_SYNC_TIMEOUT" "$resources" $(node_socks "$cl")) ||
        die "initial sync of $cl did not finish"$'\n'"$(all_log_tails "$cl")"
    echo "$secs"
}

# ---------------------------------------------------------------------------
# fio
# ---------------------------------------------------------------------------

EXPORT_SIZE=0 # bytes fio uses on every export; set in section_fio

# run_fio NAME SERVER URI FIO-ARGS... -> $WORK/results/NAME-SERVER.json
run_fio() {
    local name=$1 server=$2 uri=$3
    shift 3
    local out="$WORK/results/$name-$server.json"
    local errlog="$WORK/results/$name-$server.log"
    log "fio $name on $server (${BENCH_RUNTIME}s)"
    # Flush dirty pages left by the previous run so its writeback does not
    # land on this one.
    sync
    if ! fio --name="$name" --ioengine=nbd --uri="$uri" \
        --size="$EXPORT_SIZE" --runtime="$BENCH_RUNTIME" --time_based \
        --direct=0 --group_reporting --output-format=json --output="$out" \
        "$@" >"$errlog" 2>&1; then
        cat "$errlog" >&2
        rm -f -- "$out"
        die "fio $name against $server failed (uri $uri): $(tail -n 3 "$errlog" | tr '\n' ' ')"
    fi
}

run_workloads() {
    local server=$1 uri=$2 w name
    for w in "${WORKLOADS[@]}"; do
        read -r name _ <<<"$w"
        # shellcheck disable=SC2086 # the option list is meant to be split
        run_fio "$name" "$server" "$uri" ${w#"$name"}
    done
}

# fio_config ID PROTO LAYOUT: one replicated configuration, in a subshell.
fio_config() {
    local id=$1 proto=$2 layout=$3 res=bench src out secs uri size
    local skip="$WORK/results/$id.skipped"
    new_cluster "$id" "$layout"
    add_resource "$id" "$res" "\"$BENCH_SIZE\"" "$proto"
    # The source node's backing file starts as a copy of nbdkit's random
    # data, so reads hit real blocks as on nbdkit's side and the initial sync
    # copies real data. It has no tandem metadata yet: blockd leaves the
    # resource down until create-md.
    src=$(source_node "$id")
    cp --sparse=never "$WORK/random.img" "$(node_dir "$id" "$src")/data/$res.img"
    start_cluster "$id"
    out=$(admin "$id" "$src" create-md "$res" 2>&1) || die "create-md on n$src of $id failed: $out"
    out=$(admin "$id" "$src" up "$res" 2>&1) || die "up on n$src of $id failed: $out"
    secs=$(initial_sync "$id" "$res")
    log "$id: initial sync of $BENCH_SIZE to $((${#layout} - 1)) peer(s) took ${secs}s"
    figure "${id}_initial_sync_s" "$secs"

    if ((src != 0)); then
        # The NBD client connects to node 0, which is diskless here: the
        # source hands the primary role over to it.
        out=$(admin "$id" "$src" secondary "$res" 2>&1) || die "secondary on n$src of $id failed: $out"
        if ! out=$(admin "$id" 0 primary "$res" 2>&1); then
            log "$id: diskless node 0 refused to become primary: $out"
            printf 'not supported: %s\n' "$out" >"$skip"
            return 0
        fi
    fi

    uri=$(status_py uri "$(node_sock "$id" 0)" "$res") || die "no NBD URI for $res on n0 of $id"
    wait_for_nbd "$uri" "${NODE_PID[$id/0]}" "blockd n0 of $id"
    size=$(nbdinfo --size "$uri")
    ((size >= EXPORT_SIZE)) || die "$id exports $size bytes, less than the $EXPORT_SIZE fio uses"
    run_workloads "$id" "$uri"
    stop_cluster "$id"
}

section_fio() {
    local size_bytes c id proto layout label servers=() names=() w name rc
    size_bytes=$(size_to_bytes "$BENCH_SIZE")
    # fio uses the same region on every export: 97% of the volume (tandem's
    # metadata takes about 0.4% of 1 GiB; more, relatively, of small ones),
    # in whole MiB so that every block size fits evenly.
    EXPORT_SIZE=$((size_bytes * 97 / 100 / 1048576 * 1048576))

    log "writing $BENCH_SIZE of random data"
    dd if=/dev/urandom of="$WORK/random.img" bs=1M count=$((size_bytes / 1048576)) \
        iflag=fullblock conv=fsync status=none
    cp --sparse=never "$WORK/random.img" "$WORK/nbdkit.img"
    sync

    nbdkit -f -U "$WORK/nbdkit.sock" file file="$WORK/nbdkit.img" >"$WORK/nbdkit.log" 2>&1 &
    track_pid nbdkit "$!"
    local nbdkit_uri="nbd+unix:///?socket=$WORK/nbdkit.sock"
    wait_for_nbd "$nbdkit_uri" "$!" nbdkit
    servers+=("{\"id\": \"nbdkit\", \"label\": \"nbdkit file (1 copy)\"}")
    run_workloads nbdkit "$nbdkit_uri"
    stop_pids "$WORK/pids/nbdkit"
    rm -f -- "$WORK/nbdkit.img"
    # The floor under replication on loopback: protocol C waits for one round trip
    # between two processes per write and one per flush.
    figure loopback_rtt_us "$(python3 "$BENCH_SRC/rtt.py")"

    for c in "${CONFIGS[@]}"; do
        read -r id proto layout label <<<"$c"
        [[ " $BENCH_CONFIGS " == *" $id "* ]] || continue
        servers+=("{\"id\": \"$id\", \"label\": \"$label\"}")
        log "configuration $id: $label"
        set +e
        (
            set -e
            FAIL_FILE="$WORK/results/$id.failed"
            fio_config "$id" "$proto" "$layout"
        )
        rc=$?
        set -e
        stop_cluster "$id"
        if ((rc != 0)); then
            printf 'failed: %s\n' "$(head -n 1 "$WORK/results/$id.failed" 2>/dev/null || echo "exit status $rc")" \
                >"$WORK/results/$id.skipped"
        fi
        if [[ $BENCH_KEEP != 1 ]]; then
            # the backing files are no longer needed; keep the logs
            rm -rf -- "${WORK:?}/$id"/n*/data
        fi
    done

    for w in "${WORKLOADS[@]}"; do
        read -r name _ <<<"$w"
        names+=("$name")
    done
    local servers_json
    servers_json=$(
        IFS=,
        echo "[${servers[*]}]"
    )
    META_NBDKIT=$(nbdkit --version | head -n 1) META_EXPORT=$EXPORT_SIZE \
        META_SERVERS=$servers_json BENCH_SIZE=$BENCH_SIZE BENCH_RUNTIME=$BENCH_RUNTIME \
        python3 - "$WORK/results/meta.json" "${names[@]}" <<'EOF'
import json, os, platform, sys
e = os.environ
meta = {
    "workloads": sys.argv[2:],
    "servers": json.loads(e["META_SERVERS"]),
    "baseline": "nbdkit",
    "nproc": len(os.sched_getaffinity(0)),
    "kernel": platform.release(),
    "nbdkit": e["META_NBDKIT"],
    "size": e["BENCH_SIZE"],
    "export_bytes": int(e["META_EXPORT"]),
    "runtime_s": int(e["BENCH_RUNTIME"]),
}
with open(sys.argv[1], "w") as f:
    json.dump(meta, f, indent=2)
EOF
    rm -f -- "$WORK/random.img"
}

# ---------------------------------------------------------------------------
# Bitmap resync after 1% of the volume changed (2 diskful nodes, protocol C)
# ---------------------------------------------------------------------------

section_resync() {
    local cl=rs res=rs size_bytes secs out uri exp_size changed oos
    local sent0 recv0 sent1 recv1 t0 i
    size_bytes=$(size_to_bytes "$BENCH_RESYNC_SIZE")
    new_cluster "$cl" dd
    # With quorum (the default), a node alone out of two diskful nodes may
    # not write; this measures the resync, so quorum is off here.
    add_resource "$cl" "$res" "\"$BENCH_RESYNC_SIZE\"" C 'quorum = "off"'
    start_cluster "$cl"
    secs=$(initial_sync "$cl" "$res")
    log "resync: initial sync of $BENCH_RESYNC_SIZE took ${secs}s"
    figure resync_initial_sync_s "$secs"

    out=$(admin "$cl" 1 disconnect "$res" 2>&1) || die "disconnect on n1 failed: $out"
    for ((i = 0; i < 600; i++)); do
        [[ $(status_py peer "$(node_sock "$cl" 0)" "$res" n1 connection) != Connected ]] && break
        sleep 0.05
    done
    ((i < 600)) || die "n0 still sees n1 connected 30 s after disconnect"

    uri=$(status_py uri "$(node_sock "$cl" 0)" "$res")
    exp_size=$(nbdinfo --size "$uri")
    # 1% of the volume, in whole MiB (41 MiB of 4 GiB), as distinct random
    # 4 KiB blocks: fio's random map never writes a block twice.
    changed=$(((size_bytes / 100 + 1048575) / 1048576 * 1048576))
    log "resync: writing $changed bytes as random 4 KiB blocks on n0 while n1 is disconnected"
    fio --name=change1pct --ioengine=nbd --uri="$uri" --rw=randwrite --bs=4k \
        --iodepth=32 --size=$((exp_size / 4096 * 4096)) --io_size="$changed" \
        --end_fsync=1 --output-format=json --output="$WORK/results/resync-change.json" \
        >"$WORK/results/resync-change.log" 2>&1 ||
        die "fio writing the changes failed: $(tail -n 3 "$WORK/results/resync-change.log")"
    oos=$(status_py peer "$(node_sock "$cl" 0)" "$res" n1 out_of_sync_bytes)
    sent0=$(status_py peer "$(node_sock "$cl" 0)" "$res" n1 resync_sent_bytes)
    recv0=$(status_py peer "$(node_sock "$cl" 1)" "$res" n0 resync_received_bytes)

    t0=$(now_ns)
    out=$(admin "$cl" 1 connect "$res" 2>&1) || die "connect on n1 failed: $out"
    # shellcheck disable=SC2046
    secs=$(status_py wait-sync --since-ns "$t0" 300 "$res" $(node_socks "$cl")) ||
        die "resync did not finish"$'\n'"$(all_log_tails "$cl")"
    sent1=$(status_py peer "$(node_sock "$cl" 0)" "$res" n1 resync_sent_bytes)
    recv1=$(status_py peer "$(node_sock "$cl" 1)" "$res" n0 resync_received_bytes)
    log "resync: ${secs}s, sent $((sent1 - sent0)) bytes, received $((recv1 - recv0)) bytes, changed $changed"
    figure resync_volume_bytes "$size_bytes"
    figure resync_changed_bytes "$changed"
    figure resync_oos_bytes "$oos"
    figure resync_s "$secs"
    figure resync_sent_bytes $((sent1 - sent0))
    figure resync_received_bytes $((recv1 - recv0))
    stop_cluster "$cl"
    [[ $BENCH_KEEP == 1 ]] || rm -rf -- "${WORK:?}/$cl"/n*/data
}

# ---------------------------------------------------------------------------
# kill -9 of the primary -> first write acknowledged on the survivor
# (2 diskful + 1 diskless tiebreaker, so the survivor keeps quorum)
# ---------------------------------------------------------------------------

section_failover() {
    local cl=fo res=fo secs out uri0 uri1 t0 t1 t2 tries=0 first_err="" i
    new_cluster "$cl" ddl
    add_resource "$cl" "$res" "\"$BENCH_FAILOVER_SIZE\"" C
    start_cluster "$cl"
    secs=$(initial_sync "$cl" "$res")
    log "failover: initial sync of $BENCH_FAILOVER_SIZE took ${secs}s"
    uri0=$(status_py uri "$(node_sock "$cl" 0)" "$res")
    uri1=$(status_py uri "$(node_sock "$cl" 1)" "$res")
    # Some acknowledged writes on the primary first.
    out=$(qemu-io -f raw -c 'write -P 0xab 0 1M' -c flush "$uri0" 2>&1) ||
        die "qemu-io write on n0 failed: $out"
    # n0 stays primary (it is since primary --force; make sure).
    out=$(admin "$cl" 0 primary "$res" 2>&1) || die "primary on n0 failed: $out"

    log "failover: kill -9 of the primary n0"
    # disown: no "Killed" job notice from bash in the middle of the output
    disown "${NODE_PID[$cl/0]}"
    t0=$(now_ns)
    kill -KILL "${NODE_PID[$cl/0]}"
    for ((i = 0; i < 3000; i++)); do
        tries=$((tries + 1))
        if out=$(admin "$cl" 1 primary "$res" 2>&1); then
            break
        fi
        [[ -n $first_err ]] || first_err=$out
        sleep 0.01
    done
    ((i < 3000)) || die "n1 did not become primary within 30 s of the kill: $out"$'\n'"$(all_log_tails "$cl")"
    t1=$(now_ns)
    out=$(qemu-io -f raw -c 'write -P 0x5a 0 4k' -c flush "$uri1" 2>&1) ||
        die "qemu-io write on n1 after the failover failed: $out"$'\n'"$(all_log_tails "$cl")"
    t2=$(now_ns)
    log "failover: promoted after $(ns_to_s $((t1 - t0)))s ($tries tries), write acknowledged after $(ns_to_s $((t2 - t0)))s"
    [[ -z $first_err ]] || log "failover: first refusal: $first_err"
    figure failover_promote_s "$(ns_to_s $((t1 - t0)))"
    figure failover_total_s "$(ns_to_s $((t2 - t0)))"
    figure failover_tries "$tries"
    figure failover_first_refusal "$(echo "${first_err:-none}" | tr '\n' ' ')"
    stop_cluster "$cl"
    [[ $BENCH_KEEP == 1 ]] || rm -rf -- "${WORK:?}/$cl"/n*/data
}

# ---------------------------------------------------------------------------
# blockd RSS with BENCH_RSS_RESOURCES replicated resources (2 nodes)
# ---------------------------------------------------------------------------

section_rss() {
    local cl=rss size_bytes n=$BENCH_RSS_RESOURCES k res list=() secs i rss hwm pid
    size_bytes=$(size_to_bytes "$BENCH_RSS_SIZE")
    new_cluster "$cl" dd
    for ((k = 0; k < n; k++)); do
        res=$(printf 'r%02d' "$k")
        list+=("$res")
        add_resource "$cl" "$res" "\"$BENCH_RSS_SIZE\"" C
    done
    start_cluster "$cl"
    local joined
    joined=$(
        IFS=,
        echo "${list[*]}"
    )
    secs=$(initial_sync "$cl" "$joined")
    log "rss: initial sync of $n x $BENCH_RSS_SIZE took ${secs}s"
    figure rss_resources "$n"
    figure rss_volume_bytes "$size_bytes"
    figure rss_initial_sync_s "$secs"
    for i in 0 1; do
        pid=${NODE_PID[$cl/$i]}
        rss=$(awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status")
        hwm=$(awk '/^VmHWM:/ { print $2 }' "/proc/$pid/status")
        log "rss: blockd n$i VmRSS ${rss} kB (peak ${hwm} kB)"
        figure "rss_n${i}_kb" "$rss"
        figure "rss_n${i}_hwm_kb" "$hwm"
    done
    stop_cluster "$cl"
    [[ $BENCH_KEEP == 1 ]] || rm -rf -- "${WORK:?}/$cl"/n*/data
}

# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------

fig() { awk -v k="$1" '$1 == k { $1 = ""; sub(/^ /, ""); v = $0 } END { print v }' "$WORK/results/figures.txt"; }
failed_reason() { head -n 1 "$WORK/results/section-$1.failed" 2>/dev/null || true; }

report_figures() {
    local f=$WORK/results/figures.txt
    touch "$f"
    echo "| measurement | result | issue 4 target |"
    echo "|---|---|---|"
    local s why
    for s in $BENCH_SECTIONS; do
        why=$(failed_reason "$s")
        case $s in
        fio)
            local c id rtt base
            for c in $BENCH_CONFIGS; do
                id=$c
                [[ -n $(fig "${id}_initial_sync_s") ]] &&
                    echo "| initial full sync of $BENCH_SIZE, config $id | $(fig "${id}_initial_sync_s") s | - |"
            done
            rtt=$(fig loopback_rtt_us)
            base=$(python3 "$BENCH_SRC/fio_table.py" cycle-lat "$WORK/results/randwrite-4k-qd1-fsync-nbdkit.json" 2>/dev/null || true)
            if [[ -n $rtt ]]; then
                echo "| loopback TCP round trip between two processes (bench/rtt.py) | $rtt µs | - |"
                [[ -n $base ]] &&
                    echo "| floor for 4k QD1 write + flush, protocol C: nbdkit's $base µs plus two round trips (the peer's write ack, its flush ack) | $(awk -v b="$base" -v r="$rtt" 'BEGIN { printf "%.0f µs = %.2f× nbdkit", b + 2 * r, (b + 2 * r) / b }') | - |"
            fi
            ;;
        resync)
            if [[ -n $why ]]; then
                echo "| bitmap resync after 1% of $BENCH_RESYNC_SIZE changed (2 nodes, C, quorum off) | failed: $why | ≤ 2 s, sent ≤ 2× changed |"
                continue
            fi
            local changed sent recv t oos tv bv
            changed=$(fig resync_changed_bytes)
            sent=$(fig resync_sent_bytes)
            recv=$(fig resync_received_bytes)
            oos=$(fig resync_oos_bytes)
            t=$(fig resync_s)
            tv=$(awk -v t="$t" 'BEGIN { print (t <= 2 ? "met" : "MISSED") }')
            bv=$(awk -v s="$sent" -v c="$changed" 'BEGIN { print (s <= 2 * c ? "met" : "MISSED") }')
            echo "| initial full sync of $BENCH_RESYNC_SIZE (2 nodes, C) | $(fig resync_initial_sync_s) s | - |"
            echo "| bitmap resync after 1% of $BENCH_RESYNC_SIZE changed (2 nodes, C, quorum off): time from \`connect\` to in sync | $t s | ≤ 2 s: $tv |"
            echo "| bytes changed (distinct 4 KiB blocks) / out-of-sync on n0 before connect | $changed / $oos | - |"
            echo "| resync bytes sent by n0 / received by n1 | $sent / $recv ($(awk -v s="$sent" -v c="$changed" 'BEGIN { printf "%.2f", s / c }')× changed) | ≤ 2× changed: $bv |"
            ;;
        failover)
            if [[ -n $why ]]; then
                echo "| kill -9 of the primary to first write acknowledged on the survivor | failed: $why | ≤ 1 s |"
                continue
            fi
            local total
            total=$(fig failover_total_s)
            echo "| kill -9 of the primary to \`primary\` succeeding on n1 ($(fig failover_tries) tries) | $(fig failover_promote_s) s | - |"
            echo "| kill -9 of the primary to first 4 KiB write + flush acknowledged on n1 (qemu-io) | $total s | ≤ 1 s: $(awk -v t="$total" 'BEGIN { print (t <= 1 ? "met" : "MISSED") }') |"
            echo "| peer timeout in use (timeout-ms) | $DEFAULT_TIMEOUT_MS ms (the default; not set in the resource file) | - |"
            echo "| first refusal of \`primary\` on n1 | $(fig failover_first_refusal) | - |"
            ;;
        rss)
            if [[ -n $why ]]; then
                echo "| blockd RSS with $BENCH_RSS_RESOURCES resources | failed: $why | ≤ 30 MiB + bitmaps |"
                continue
            fi
            local n vb bm_mem bm_disk rss0 rss1
            n=$(fig rss_resources)
            vb=$(fig rss_volume_bytes)
            # one bit per 4 KiB block, per peer; each bitmap rounded up to 4 KiB
            bm_mem=$((n * ((vb / 4096 / 8 + 4095) / 4096 * 4096)))
            bm_disk=$((bm_mem * 7))
            rss0=$(fig rss_n0_kb)
            rss1=$(fig rss_n1_kb)
            echo "| initial full sync of $n × $BENCH_RSS_SIZE (2 nodes, C) | $(fig rss_initial_sync_s) s | - |"
            echo "| blockd VmRSS with $n resources of $BENCH_RSS_SIZE, all in sync: n0 (primary) / n1 | $(awk -v k="$rss0" 'BEGIN { printf "%.1f", k / 1024 }') MiB / $(awk -v k="$rss1" 'BEGIN { printf "%.1f", k / 1024 }') MiB (peak $(awk -v k="$(fig rss_n0_hwm_kb)" 'BEGIN { printf "%.1f", k / 1024 }') / $(awk -v k="$(fig rss_n1_hwm_kb)" 'BEGIN { printf "%.1f", k / 1024 }') MiB) | ≤ 30 MiB + bitmaps: $(awk -v k="$rss0" -v k1="$rss1" -v b="$bm_mem" 'BEGIN { print ((k > k1 ? k : k1) * 1024 <= 30 * 1048576 + b ? "met" : "MISSED") }') |"
            echo "| bitmaps: $n resources × 1 peer × $((vb / 4096 / 8 / 1024)) KiB (4 KiB per bit) | $((bm_mem / 1024)) KiB ($((bm_disk / 1024)) KiB on disk with the 7 default peer slots) | - |"
            ;;
        esac
    done
}

main() {
    check_tools
    local s sz need=0
    for s in "$BENCH_SIZE" "$BENCH_RESYNC_SIZE" "$BENCH_FAILOVER_SIZE" "$BENCH_RSS_SIZE"; do
        size_to_bytes "$s" >/dev/null
    done
    # Largest footprint at one time: the fio section holds the random image
    # plus 3 copies (3 replicas); the RSS section 2 x N volumes (sparse until
    # synced, then full).
    sz=$(size_to_bytes "$BENCH_SIZE")
    ((need < 4 * sz)) && need=$((4 * sz))
    sz=$(size_to_bytes "$BENCH_RESYNC_SIZE")
    ((need < 2 * sz)) && need=$((2 * sz))
    sz=$(size_to_bytes "$BENCH_RSS_SIZE")
    ((need < 2 * BENCH_RSS_RESOURCES * sz)) && need=$((2 * BENCH_RSS_RESOURCES * sz))
    mkdir -p "$BENCH_DIR"
    local avail
    avail=$(df --output=avail -B1 "$BENCH_DIR" | tail -n 1)
    ((avail > need + 256 * 1048576)) ||
        die "not enough space in $BENCH_DIR: need about $((need / 1048576)) MiB, have $((avail / 1048576)) MiB"

    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    WORK=$(mktemp -d "$BENCH_DIR/tandem-bench-repl.XXXXXX")
    mkdir -p "$WORK/results" "$WORK/pids"
    touch "$WORK/results/figures.txt"
    log "scratch dir: $WORK; tandem: $TANDEM_BIN"

    local rc
    for s in $BENCH_SECTIONS; do
        log "section $s"
        set +e
        (
            set -e
            FAIL_FILE="$WORK/results/section-$s.failed"
            "section_$s"
        )
        rc=$?
        set -e
        # whatever the section left running (after a failure) goes now
        local f
        for f in "$WORK"/pids/*; do
            [[ -e $f ]] && stop_pids "$f"
        done
        if ((rc != 0)); then
            [[ -s $WORK/results/section-$s.failed ]] || echo "exit status $rc" >"$WORK/results/section-$s.failed"
            log "section $s failed: $(head -n 1 "$WORK/results/section-$s.failed")"
        fi
    done

    local table="$WORK/results/table.md" status=0
    {
        echo "# tandem replicated on loopback vs nbdkit ($(date -u +%Y-%m-%d))"
        echo
        echo "$("$TANDEM_BIN" --version 2>/dev/null || echo "tandem (version unknown)"), binary $TANDEM_BIN"
        echo
        if [[ " $BENCH_SECTIONS " == *" fio "* ]]; then
            if [[ -f $WORK/results/meta.json ]]; then
                python3 "$BENCH_SRC/fio_table.py" multi "$WORK/results" || status=1
            else
                echo "fio section failed: $(failed_reason fio)"
                status=1
            fi
            echo
        fi
        report_figures
    } >"$table"
    echo
    cat "$table"
    for s in $BENCH_SECTIONS; do
        [[ -s $WORK/results/section-$s.failed ]] && status=1
    done

    if [[ $BENCH_KEEP == 1 ]]; then
        local keep="$ROOT/bench/results/LAST-replicated" d
        rm -rf -- "$keep"
        mkdir -p "$keep"
        cp "$WORK"/results/* "$keep"/
        for d in "$WORK"/*/n*; do
            [[ -f $d/blockd.log ]] || continue
            cp "$d/blockd.log" "$keep/blockd-$(basename "$(dirname "$d")")-$(basename "$d").log"
        done
        log "results copied to $keep"
    fi
    return "$status"
}

main "$@"
