#!/usr/bin/env bash
# cargo-lambda as an independent Runtime API: runs examples/echo.rs under
# `cargo lambda watch` (its Runtime API emulator, not our simulator), sends concurrent
# invocations through watch's invoke endpoint and checks that every one comes back with
# its own payload, that the function saw the concurrency we gave it, and that its JSON
# log lines carry each invocation's request id. Fails if cargo-lambda cannot be installed
# or started; nothing here is optional.
#
# What cargo-lambda 1.9.2 does, and what this script does about it:
# * `watch` refuses a package without a [[bin]] target ("the project doesn't include any
#   binary packages"), even with --example. So a throw-away package in a temporary
#   directory builds examples/echo.rs, unchanged, as its bin `echo` against this crate.
# * It starts the function lazily, on the first invocation, with `cargo run`: we build it
#   first (so compile errors show up as such), then warm it up with one invocation.
# * Invocations are POSTed to http://ADDR:PORT/2015-03-31/functions/echo/invocations
#   (the function's name is the bin's name); the reply is the function's response body.
# * The function gets AWS_LAMBDA_RUNTIME_API=http://ADDR:PORT/.rt/echo,
#   AWS_LAMBDA_FUNCTION_NAME=echo, _VERSION=1, _MEMORY_SIZE=4096, AWS_LAMBDA_INSTANCE_ID
#   and AWS_LAMBDA_MAX_CONCURRENCY=1. It scales by starting more processes
#   (`--concurrency N`, each still with a maximum concurrency of 1), and its 1 overrides
#   `--env-var AWS_LAMBDA_MAX_CONCURRENCY=...`. Its Runtime API does route concurrent
#   invocations to concurrent `/next` polls of one process, so a cargo runner (`env`, in
#   the package's .cargo/config.toml) sets AWS_LAMBDA_MAX_CONCURRENCY as Managed
#   Instances would, and one process serves them all.
# * It sends `Lambda-Runtime-Deadline-Ms: 600000` (a duration, not the epoch
#   milliseconds the Runtime API specifies). The runtime reads a value that cannot be an
#   epoch deadline as milliseconds from now, so deadline enforcement stays on here.
#
# Environment: CARGO_TARGET_DIR (default: this repository's target/, reused from the
# tests), INVOCATIONS (50), PARALLEL (16 client threads), CONCURRENCY (16).
set -euo pipefail
# Absolute (the function is built from a temporary directory); relative to the caller's
# directory, as cargo would take it.
[ -z "${CARGO_TARGET_DIR:-}" ] || CARGO_TARGET_DIR=$(realpath -m "$CARGO_TARGET_DIR")
cd "$(dirname "$0")/.."
repo=$(pwd)

CARGO_LAMBDA_VERSION=1.9.2
INVOCATIONS=${INVOCATIONS:-50}
PARALLEL=${PARALLEL:-16}
CONCURRENCY=${CONCURRENCY:-16}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$repo/target}

echo "== cargo-lambda $CARGO_LAMBDA_VERSION as an independent Runtime API"

fail() {
    echo "cargo-lambda check FAILED: $*" >&2
    exit 1
}

# --- install: the prebuilt binary from the Python wheel (zig, its only dependency, is
# needed for cross-compiling only).
python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
    --no-deps "cargo-lambda==$CARGO_LAMBDA_VERSION" ||
    fail "pip could not install cargo-lambda==$CARGO_LAMBDA_VERSION"
scripts=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
export PATH="$scripts:$PATH"
[ -x "$scripts/cargo-lambda" ] || fail "no cargo-lambda in $scripts after pip install"
version=$(cargo lambda --version) || fail "cargo lambda --version did not run"
case "$version" in
*" $CARGO_LAMBDA_VERSION "* | *" $CARGO_LAMBDA_VERSION") echo "installed: $version" ;;
*) fail "expected cargo-lambda $CARGO_LAMBDA_VERSION, got: $version" ;;
esac

# --- the function's package: examples/echo.rs as bin `echo`.
work=$(mktemp -d)
watch_pid=
port=
# The function's processes: watch starts them in process groups of their own, so they are
# found by executable and by the Runtime API address this run gave them.
function_pids() {
    local exe proc
    exe=$(realpath -m "$CARGO_TARGET_DIR/debug/echo")
    for proc in /proc/[0-9]*; do
        [ "$(readlink "$proc/exe" 2>/dev/null)" = "$exe" ] || continue
        tr '\0' '\n' <"$proc/environ" 2>/dev/null |
            grep -qx "AWS_LAMBDA_RUNTIME_API=http://127.0.0.1:$port/.rt/echo" &&
            echo "${proc#/proc/}"
    done
    return 0
}
cleanup() {
    if [ -n "$watch_pid" ] && kill -0 "$watch_pid" 2>/dev/null; then
        # watch runs in its own session (process group): SIGTERM lets it stop the function.
        kill -TERM -- "-$watch_pid" 2>/dev/null || true
        for _ in $(seq 50); do
            kill -0 "$watch_pid" 2>/dev/null || break
            sleep 0.2
        done
        kill -KILL -- "-$watch_pid" 2>/dev/null || true
    fi
    if [ -n "$port" ]; then
        for pid in $(function_pids); do
            echo "ending function process $pid left by watch"
            kill -KILL "$pid" 2>/dev/null || true
        done
    fi
    if [ -n "${KEEP_WORK:-}" ]; then echo "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

mkdir -p "$work/.cargo"
cat >"$work/Cargo.toml" <<EOF
[package]
name = "lambda-tpc-echo"
version = "0.0.0"
edition = "2024"
publish = false

[[bin]]
name = "echo"
path = '$repo/examples/echo.rs'

[dependencies]
lambda-tpc = { path = '$repo', features = ["logging"] }
serde_json = "1"
tracing = "0.1"

[workspace]
EOF
cat >"$work/.cargo/config.toml" <<EOF
# cargo-lambda sets AWS_LAMBDA_MAX_CONCURRENCY=1; set it as Managed Instances would.
[target.'cfg(all())']
runner = ["env", "AWS_LAMBDA_MAX_CONCURRENCY=$CONCURRENCY"]
EOF
# Same versions (and toolchain) as the repository, so the tests' artifacts are reused.
cp Cargo.lock rust-toolchain.toml "$work/"

cd "$work"
echo "-- building the function (debug, CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
started=$(date +%s)
cargo build --quiet --bin echo || fail "the function did not build"
echo "built in $(($(date +%s) - started)) s"

# --- start watch on a free loopback port.
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
log="$work/watch.log"
# The function's environment (an env file: `--env-var` splits values at commas).
cat >"$work/function.env" <<EOF
AWS_LAMBDA_LOG_FORMAT=JSON
RUST_LOG="info,echo=debug"
EOF
setsid cargo lambda watch --ignore-changes -A 127.0.0.1 -P "$port" \
    --env-file "$work/function.env" </dev/null >"$log" 2>&1 &
watch_pid=$!

# --- wait for readiness, run the invocations, check everything.
set +e
python3 - "$port" "$INVOCATIONS" "$PARALLEL" "$CONCURRENCY" "$log" "$watch_pid" <<'PY'
import json, os, socket, sys, threading, time, urllib.error, urllib.request
from concurrent.futures import ThreadPoolExecutor

port, n, parallel, concurrency = (int(a) for a in sys.argv[1:5])
log_path, watch_pid = sys.argv[5], int(sys.argv[6])
url = f"http://127.0.0.1:{port}/2015-03-31/functions/echo/invocations"
problems = []

def watch_alive():
    try:
        os.kill(watch_pid, 0)
        return True
    except OSError:
        return False

def log_lines():
    with open(log_path, errors="replace") as f:
        return f.read().splitlines()

def die(msg):
    print(f"cargo-lambda check FAILED: {msg}", file=sys.stderr)
    print("--- last lines of cargo lambda watch's output:", file=sys.stderr)
    for line in log_lines()[-30:]:
        print("   ", line[:300], file=sys.stderr)
    sys.exit(1)

def invoke(payload, timeout):
    req = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                 headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except Exception as e:  # timeouts, resets
        return None, repr(e).encode()

# Readiness: the invoke port accepts connections.
deadline = time.monotonic() + 60
while True:
    if not watch_alive():
        die("cargo lambda watch exited during start-up")
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        break
    except OSError:
        if time.monotonic() > deadline:
            die(f"nothing listening on 127.0.0.1:{port} after 60 s")
        time.sleep(0.2)

# Warm-up: starts the function (watch runs `cargo run`, already built).
t0 = time.monotonic()
status, body = invoke({"warm": "up"}, timeout=180)
if status != 200 or json.loads(body or b"null") != {"warm": "up"}:
    die(f"warm-up invocation: HTTP {status}: {body[:300]!r}")
print(f"function up, first invocation answered in {time.monotonic() - t0:.1f} s")

# The invocations: distinct payloads of varied size and shape, PARALLEL at a time.
lock = threading.Lock()
in_flight = [0, 0]

def one(i):
    payload = {
        "i": i,
        "caller": f"caller-{i}",
        "pad": "x" * (i * 37 % 700),
        "nested": {"list": list(range(i % 9)), "unicode": "zoë ✓", "flag": i % 2 == 0},
    }
    with lock:
        in_flight[0] += 1
        in_flight[1] = max(in_flight[1], in_flight[0])
    t = time.monotonic()
    status, body = invoke(payload, timeout=60)
    with lock:
        in_flight[0] -= 1
    try:
        got = json.loads(body)
    except ValueError:
        got = body[:200]
    return i, status, got == payload, got, time.monotonic() - t

t0 = time.monotonic()
with ThreadPoolExecutor(parallel) as pool:
    results = list(pool.map(one, range(n)))
elapsed = time.monotonic() - t0
wrong = [(i, status, got) for i, status, ok, got, _ in results if status != 200 or not ok]
for i, status, got in wrong[:10]:
    problems.append(f"invocation {i}: HTTP {status}, body {str(got)[:200]}")
latencies = sorted(r[4] for r in results)
print(f"{n} invocations, {parallel} client threads: {n - len(wrong)} right, {len(wrong)} wrong, "
      f"{elapsed:.2f} s, max {in_flight[1]} in flight, latency p50 "
      f"{latencies[len(latencies) // 2] * 1e3:.0f} ms, max {latencies[-1] * 1e3:.0f} ms")

# The function's JSON log lines (its stdout, interleaved with watch's output).
time.sleep(0.5)
records = []
for line in log_lines():
    if line.startswith("{"):
        try:
            records.append(json.loads(line))
        except ValueError:
            problems.append(f"log line is not JSON: {line[:200]}")
starts = [r for r in records if r.get("message") == "starting lambda-tpc"]
if len(starts) != 1:
    problems.append(f"expected one function process, saw {len(starts)} start-up lines")
elif starts[0].get("max_concurrency") != concurrency:
    problems.append(f"function started with max_concurrency {starts[0].get('max_concurrency')}, "
                    f"expected {concurrency}")
else:
    s = starts[0]
    print(f"function: one process, max_concurrency {s['max_concurrency']}, cores {s.get('cores')}, "
          f"strategy {s.get('strategy')}, runtime API {s.get('runtime_api')}")
echoes = [r for r in records if r.get("message") == "echoing"]
ids = {r.get("requestId") for r in echoes}
if len(echoes) != n + 1 or None in ids or len(ids) != n + 1:
    problems.append(f"expected {n + 1} 'echoing' log lines with distinct request ids, "
                    f"got {len(echoes)} lines, {len(ids - {None})} ids")
else:
    print(f"log: {len(records)} JSON lines, {len(echoes)} per-invocation lines with "
          f"{len(ids)} distinct request ids")
print("sample of the function's JSON log lines:")
sample = starts[:1] + [r for r in records if r.get("message") == "core started"][:1] + echoes[:3]
for r in sample:
    print("   ", json.dumps(r, ensure_ascii=False))

if problems:
    for p in problems:
        print(f"cargo-lambda check FAILED: {p}", file=sys.stderr)
    sys.exit(1)
print(f"cargo-lambda: {n} of {n} invocations answered right.")
PY
rc=$?
set -e
[ "$rc" -eq 0 ] || fail "see above"
kill -0 "$watch_pid" 2>/dev/null || fail "cargo lambda watch is no longer running"

# --- stop watch; it stops the function (anything left is ended by the trap).
kill -TERM -- "-$watch_pid"
for _ in $(seq 50); do
    kill -0 "$watch_pid" 2>/dev/null || break
    sleep 0.2
done
left=$(function_pids)
[ -z "$left" ] || echo "note: watch left function process(es) $left running; ending them"
echo "cargo-lambda OK"
