#!/usr/bin/env bash
# obm-gate against nginx, side by side on loopback, in one run (see BENCHMARKS.md).
#
#   bench/compare.sh                 # every scenario, 10 s per run
#   DUR=5 bench/compare.sh           # shorter runs
#   ONLY="c d" SERVERS=obm-gate bench/compare.sh   # some scenarios (a b c d e), one server
#   KEEP=1 bench/compare.sh          # leave both servers running afterwards (for perf), print W
#   GATE=/tmp/obm-gate-old ONLY=d SERVERS=obm-gate bench/compare.sh   # another obm-gate build (A/B)
#   ROUNDS=3 bench/compare.sh        # (a)-(d) three times, the report gives medians; (e) once
#   ORGS=512 PREFILL=30 C_LEVELS=512 ONLY=c bench/compare.sh   # many orgs, a store already full
#   OBM_GATE_STORE_URL='postgres://postgres@127.0.0.1/test?options=-c%20search_path%3Dobm_bench' \
#     SERVERS=obm-gate bench/compare.sh   # the PostgreSQL store (the schema must exist and be
#                                         # empty); the server's CPU then includes PostgreSQL's
#
# ORGS=N registers N client certificates, one per org (one RSA key for all); loadgen's worker k
# sends as org k mod N (oha and s_time use the first). PREFILL=S sends
# S seconds of 100-notification messages from every org to obm-gate before the first run, so the
# store starts with history in every org's part of the unique key; it is not recorded.
#
# Both servers get the same ECDSA P-256 server certificate and the same RSA-2048 client
# certificate, and negotiate the same suite and key exchange. nginx: ssl_verify_client on, the
# client certificate as its trust list, `return 200` with the canonical ack (it neither parses
# nor stores). obm-gate: its full path (registry, parse, org binding, SQLite group commit with
# synchronous=FULL, ack).
# Results: bench/results/results.jsonl, then bench/report.py writes the table and the plot.
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${DUR:-10}
ROUNDS=${ROUNDS:-1}
ONLY=${ONLY:-a b c d e}
SERVERS=${SERVERS:-nginx obm-gate}
OUT=${OUT:-bench/results}
NGINX_PORT=18443
GATE_PORT=18444
ORG=00Dxx0000001gPFEAY
ONE_ID=04l000000000000001  # the notification ID of oha's one body
ORGS=${ORGS:-1}
PODS=${PODS:-$ORGS}  # the Salesforce pods the orgs are on; by default each org has its own
PREFILL=${PREFILL:-0}
C_LEVELS=${C_LEVELS:-1 16 128}
mkdir -p "$OUT"
: > "$OUT/results.jsonl"

# --- what it needs -------------------------------------------------------------------------
missing=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
if ((${#missing[@]})); then
  apt-get update && apt-get install -y --no-install-recommends "${missing[@]}"
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
command -v oha >/dev/null 2>&1 || cargo install --locked oha
cargo build --release --locked --bin obm-gate --example loadgen
GATE=${GATE:-target/release/obm-gate}  # GATE=path measures another build
LOADGEN=target/release/examples/loadgen
ulimit -n "$(ulimit -Hn)"  # 10,000 idle connections need more than the usual 1,024

W=$(mktemp -d /tmp/obm-bench.XXXXXX)
cleanup() {
  pkill -f -- "$W/client.pem" 2>/dev/null || true  # this run's clients (all name its certificate)
  [ -f "$W/nginx.pid" ] && kill "$(cat "$W/nginx.pid")" 2>/dev/null || true
  [ -n "${GATE_PID:-}" ] && kill "$GATE_PID" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT
# Stopped (kill, Ctrl-C): exit through cleanup once the running client returns (at most DUR
# seconds), instead of dying at once and leaving servers and a client that disturbs the next run.
trap 'exit 143' TERM
trap 'exit 130' INT

# --- certificates --------------------------------------------------------------------------
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
  -keyout "$W/server.key" -out "$W/server.pem" -subj /CN=localhost \
  -addext subjectAltName=DNS:localhost -addext basicConstraints=critical,CA:FALSE 2>/dev/null
openssl req -x509 -newkey rsa:2048 -nodes -days 30 -keyout "$W/client.key" -out "$W/client.pem" \
  -subj "/CN=bench client/O=obm-gate bench" -addext extendedKeyUsage=clientAuth \
  -addext basicConstraints=critical,CA:FALSE 2>/dev/null
mkdir -p "$W/orgs/$ORG" "$W/nginx"
cp "$W/client.pem" "$W/orgs/$ORG/bench.pem"
# More orgs: the k-th gets its own certificate (same key) and an org ID with a valid suffix
# (00Dxx, ten digits, then EAA: only the D is upper case).
CLIENTS=(--pods "$PODS" --cert "$W/client.pem" --org "$ORG")
cp "$W/client.pem" "$W/clients.pem"
for k in $(seq 2 "$ORGS"); do
  org=$(printf '00Dxx%010dEAA' "$k")
  mkdir -p "$W/orgs/$org"
  openssl req -x509 -new -key "$W/client.key" -days 30 -out "$W/orgs/$org/bench.pem" \
    -subj "/CN=bench client $k/O=obm-gate bench" -addext extendedKeyUsage=clientAuth \
    -addext basicConstraints=critical,CA:FALSE 2>/dev/null
  cat "$W/orgs/$org/bench.pem" >> "$W/clients.pem"
  CLIENTS+=(--cert "$W/orgs/$org/bench.pem" --org "$org")
done

for p in $NGINX_PORT $GATE_PORT 19090; do
  if (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null; then
    echo "compare.sh: port $p is in use (a server left from an earlier run?)" >&2; exit 1
  fi
done

# --- nginx ---------------------------------------------------------------------------------
# The same bytes as obm-gate's soap::ACK.
ACK='<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body><notificationsResponse xmlns="http://soap.sforce.com/2005/09/outbound"><Ack>true</Ack></notificationsResponse></soapenv:Body></soapenv:Envelope>'
cat > "$W/nginx.conf" <<CONF
worker_processes auto;
worker_rlimit_nofile 20000;
pid $W/nginx.pid;
error_log $W/nginx/error.log warn;
events { worker_connections 12000; }
http {
  access_log off;
  client_body_temp_path $W/nginx;
  proxy_temp_path $W/nginx; fastcgi_temp_path $W/nginx; uwsgi_temp_path $W/nginx; scgi_temp_path $W/nginx;
  keepalive_requests 10000000;
  keepalive_timeout 120s;
  client_max_body_size 8m;
  client_body_buffer_size 128k;
  server {
    listen 127.0.0.1:$NGINX_PORT ssl;
    ssl_certificate $W/server.pem;
    ssl_certificate_key $W/server.key;
    ssl_protocols TLSv1.2 TLSv1.3;
    # obm-gate's suite order (AES-128-GCM with SHA-256 first, the server's choice) for nginx too;
    # by default OpenSSL takes the client's first choice, AES-256-GCM-SHA384, which costs more.
    ssl_prefer_server_ciphers on;
    ssl_ciphers ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305;
    ssl_conf_command Ciphersuites TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256;
    ssl_verify_client on;
    ssl_client_certificate $W/clients.pem;
    ssl_session_cache shared:SSL:20m;
    location = /obm {
      default_type "text/xml; charset=utf-8";
      return 200 '$ACK';
    }
  }
}
CONF
"$NGINX" -c "$W/nginx.conf" -p "$W/nginx"

# --- obm-gate ------------------------------------------------------------------------------
OBM_GATE_LISTEN_ADDRESS=127.0.0.1:$GATE_PORT OBM_GATE_ADMIN_ADDRESS=127.0.0.1:19090 \
OBM_GATE_TLS_CERTIFICATE=$W/server.pem OBM_GATE_TLS_PRIVATE_KEY=$W/server.key \
OBM_GATE_REGISTRY_DIRECTORY=$W/orgs OBM_GATE_STORE_PATH=$W/data/obm-gate.db \
OBM_GATE_LIMITS_MAX_CONNECTIONS=20000 RUST_LOG=warn \
  "$GATE" serve > "$W/gate.log" 2>&1 &
GATE_PID=$!
for _ in $(seq 100); do
  (exec 3<>/dev/tcp/127.0.0.1/$GATE_PORT) 2>/dev/null && (exec 3<>/dev/tcp/127.0.0.1/$NGINX_PORT) 2>/dev/null && break
  sleep 0.1
done
kill -0 "$GATE_PID" 2>/dev/null || { echo "compare.sh: obm-gate did not start:" >&2; cat "$W/gate.log" >&2; exit 1; }

# --- measuring -----------------------------------------------------------------------------
pids() { # the server's processes
  if [ "$1" = nginx ]; then
    local master; master=$(cat "$W/nginx.pid"); echo "$master $(pgrep -P "$master" | tr '\n' ' ')"
  else
    echo "$GATE_PID"
  fi
}
# The processes whose work a message costs: with OBM_GATE_STORE_URL (obm-gate storing to a
# PostgreSQL on this machine) the database server's processes count as obm-gate's too.
work_pids() {
  pids "$1"
  if [ "$1" = obm-gate ] && [ -n "${OBM_GATE_STORE_URL:-}" ]; then pgrep -x postgres || true; fi
}
ticks() { local t=0; for p in $(work_pids "$1"); do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0))); done; echo $t; }
# Bytes the server's processes handed to write(2) and kin, files and sockets alike.
wchar() { local w=0; for p in $(work_pids "$1"); do w=$((w + $(awk '/^wchar/ {print $2}' "/proc/$p/io" 2>/dev/null || echo 0))); done; echo $w; }
rss_kb() { local r=0; for p in $(pids "$1"); do r=$((r + $(awk '/^VmRSS/ {print $2}' "/proc/$p/status"))); done; echo $r; }
port() { [ "$1" = nginx ] && echo $NGINX_PORT || echo $GATE_PORT; }
HZ=$(getconf CLK_TCK)
# The whole machine's CPU time so far, in ticks: "idle all" (iowait counts as idle: a core
# waiting for an fsync runs nothing). idle_since BEFORE gives the share of the machine that
# no process used since BEFORE: left over by the server and the client together.
cpu_stat() { awk '/^cpu / {print $5 + $6, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9}' /proc/stat; }
idle_since() {
  local i0=${1% *} a0=${1#* } now; now=$(cpu_stat)
  python3 -c "print(round((${now% *} - $i0) / max(1, ${now#* } - $a0), 3))"
}

# record SCENARIO SERVER CLIENT JSON_FROM_CLIENT CPU_TICKS [BYTES_WRITTEN [MACHINE_IDLE]]
record() {
  python3 - "$1" "$2" "$3" "$4" "$5" "${6:-0}" "$HZ" "$(rss_kb "$2")" "$ROUND" "${7:-}" >> "$OUT/results.jsonl" <<'PY'
import json, sys
scenario, server, client, raw, ticks, wrote, hz, rss, rnd, idle = sys.argv[1:11]
r = json.loads(raw)
r.update(scenario=scenario, server=server, client=client, round=int(rnd), cpu_seconds=int(ticks) / int(hz), rss_kb=int(rss))
# The share of the machine's CPU time that nobody used during the run.
if idle:
    r["machine_idle"] = float(idle)
n = r.get("requests") or 0
r["cpu_ms_per_msg"] = r["cpu_seconds"] * 1000 / n if n else None
# What the server wrote (store files and sockets) per message, in KB.
r["written_kb_per_msg"] = int(wrote) / 1000 / n if n and int(wrote) else None
print(json.dumps(r))
PY
  tail -n 1 "$OUT/results.jsonl"
}

loadgen() { # SCENARIO SERVER ARGS...
  local scenario=$1 server=$2; shift 2
  local t0 w0 s0 json; t0=$(ticks "$server"); w0=$(wchar "$server"); s0=$(cpu_stat)
  json=$("$LOADGEN" --addr 127.0.0.1:"$(port "$server")" "${CLIENTS[@]}" --key "$W/client.key" \
    --ca "$W/server.pem" --duration "$DUR" "$@" | tail -n 1)
  record "$scenario" "$server" loadgen "$json" $(( $(ticks "$server") - t0 )) \
    $(( $(wchar "$server") - w0 )) "$(idle_since "$s0")"
}

oha_run() { # SCENARIO SERVER CONCURRENCY
  local scenario=$1 server=$2 c=$3 t0 s0 json
  "$LOADGEN" --help >/dev/null
  t0=$(ticks "$server"); s0=$(cpu_stat)
  json=$(oha -z "${DUR}s" -c "$c" --no-tui --output-format json -m POST \
    -H 'SOAPAction: ""' -T 'text/xml; charset=utf-8' -D "$W/one.xml" \
    --cacert "$W/server.pem" --cert "$W/client.pem" --key "$W/client.key" \
    "https://localhost:$(port "$server")/obm" | python3 -c '
import json, sys
r = json.load(sys.stdin); s = r["summary"]; p = r["latencyPercentiles"]
codes = r.get("statusCodeDistribution", {})
ok = int(codes.get("200", 0))
print(json.dumps({"mode": "keepalive-same-body", "concurrency": '"$c"', "requests": ok,
  "errors": sum(int(v) for k, v in codes.items() if k != "200"), "seconds": s["total"],
  "rate": ok / s["total"], "p50_ms": p["p50"] * 1000, "p99_ms": p["p99"] * 1000}))')
  record "$scenario" "$server" oha "$json" $(( $(ticks "$server") - t0 )) 0 "$(idle_since "$s0")"
}

s_time() { # SCENARIO SERVER -new|-reuse
  local scenario=$1 server=$2 flag=$3 t0 s0 out rate
  t0=$(ticks "$server"); s0=$(cpu_stat)
  out=$(openssl s_time -connect 127.0.0.1:"$(port "$server")" "$flag" -time "$DUR" \
    -cert "$W/client.pem" -key "$W/client.key" -CAfile "$W/server.pem" 2>&1 || true)
  rate=$(echo "$out" | sed -n 's/.*connections in .* real seconds, .*//; s/^\([0-9]*\) connections in \([0-9.]*\)s; \([0-9.]*\) connections\/user sec.*/\1 \2/p' | head -n 1)
  local n secs; n=${rate% *}; secs=${rate#* }
  [ -n "$n" ] || { echo "s_time: no result: $out" >&2; return 0; }
  record "$scenario" "$server" "openssl s_time $flag" \
    "{\"mode\":\"s_time$flag\",\"concurrency\":1,\"requests\":$n,\"errors\":0,\"seconds\":$secs,\"rate\":$(python3 -c "print($n/$secs)")}" \
    $(( $(ticks "$server") - t0 )) 0 "$(idle_since "$s0")"
}

# One fixed message for oha (obm-gate stores it once; every later one takes the duplicate path).
"$LOADGEN" --help >/dev/null
python3 - "$W/one.xml" "$ORG" "$ONE_ID" <<'PY'
import sys
path, org, one_id = sys.argv[1:4]
open(path, "w").write(f'<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body><notifications xmlns="http://soap.sforce.com/2005/09/outbound"><OrganizationId>{org}</OrganizationId><ActionId>04kxx00000000blCAA</ActionId><SessionId xsi:nil="true"/><EnterpriseUrl>https://example.my.salesforce.com/services/Soap/c/60.0/00Dxx0000001gPF</EnterpriseUrl><PartnerUrl>https://example.my.salesforce.com/services/Soap/u/60.0/00Dxx0000001gPF</PartnerUrl><Notification><Id>{one_id}</Id><sObject xsi:type="sf:Contact" xmlns:sf="urn:sobject.enterprise.soap.sforce.com"><sf:Id>003xx000004TmiQAAS</sf:Id><sf:LastName>Black</sf:LastName></sObject></Notification></notifications></soapenv:Body></soapenv:Envelope>')
PY

want() { [[ " $ONLY " == *" $1 "* ]]; }
# Each run is made on both servers back to back, so a ratio compares two runs seconds apart.
# With ROUNDS > 1 every run repeats, the server that goes first alternating, and bench/report.py
# gives the median ratio with its range. (e) runs once, after the rounds: a second hold of
# 10,000 connections would start from the memory the first left to each allocator.
runs() { # the runs ONLY asks for, in order
  want a && echo a
  want b && echo b
  want c && for c in $C_LEVELS; do echo "c$c"; done
  want d && echo d
  true
}
run() { # RUN SERVER
  local server=$2
  case $1 in
    a) loadgen a "$server" --mode new --concurrency 16
       s_time a "$server" -new ;;
    b) loadgen b "$server" --mode resume --concurrency 16
       s_time b "$server" -reuse ;;
    c*) loadgen c "$server" --mode keepalive --concurrency "${1#c}"
        oha_run c-same-body "$server" "${1#c}" ;;
    d) loadgen d "$server" --mode keepalive --concurrency 16 --notifications 100 ;;
  esac
}
if ((PREFILL > 0)) && [[ " $SERVERS " == *" obm-gate "* ]]; then
  echo "== prefill: $PREFILL s of 100-notification messages from $ORGS orgs to obm-gate"
  "$LOADGEN" --addr 127.0.0.1:$GATE_PORT "${CLIENTS[@]}" --key "$W/client.key" --ca "$W/server.pem" \
    --mode keepalive --concurrency $((ORGS > 16 ? ORGS : 16)) --notifications 100 --duration "$PREFILL" | tail -n 1
  if [ -d "$W/data" ]; then du -sh "$W/data"; fi  # not with OBM_GATE_STORE_URL (PostgreSQL)
fi
# The notifications obm-gate's store holds, but for oha's one body, counted by a reader of our
# own, not by obm-gate: after the runs, every one it acknowledged must be there (see below).
stored_count() {
  if [ -n "${OBM_GATE_STORE_URL:-}" ]; then
    psql "$OBM_GATE_STORE_URL" -tAc "SELECT count(*) FROM obm_notifications WHERE notification_id <> '$ONE_ID'"
  else
    python3 - "$W/data/obm-gate.db" "$ONE_ID" <<'PY'
import sqlite3, sys
db = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True)
print(db.execute("SELECT count(*) FROM notifications WHERE notification_id <> ?", (sys.argv[2],)).fetchone()[0])
PY
  fi
}
gate_runs() { [[ " $SERVERS " == *" obm-gate "* ]] && [ -n "$(runs)" ]; }
if gate_runs; then STORED_BEFORE=$(stored_count); fi
ROUND=1
for ROUND in $(seq "$ROUNDS"); do
  order=$SERVERS
  ((ROUND % 2)) || order=$(echo "$SERVERS" | tr ' ' '\n' | tac | tr '\n' ' ')
  for r in $(runs); do
    for server in $order; do
      echo "== round $ROUND, $r, $server"
      run "$r" "$server"
    done
  done
done
# Every notification with a fresh ID that loadgen saw acknowledged in obm-gate's runs, against
# what its store gained over them. A store that gained fewer lost an acknowledged notification:
# the run fails, once the report is written. (It may gain more: a message cut by an error.)
LOST=0
if gate_runs; then
  line=$(python3 - "$OUT/results.jsonl" "$STORED_BEFORE" "$(stored_count)" <<'PY'
import json, sys
path, before, after = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
acked = 0
for l in open(path):
    r = json.loads(l)
    if r["server"] == "obm-gate" and r["client"] == "loadgen" and r["scenario"] in ("a", "b", "c", "d"):
        acked += r["requests"] * r["notifications"]
print(json.dumps({"scenario": "stored", "server": "obm-gate", "client": "store", "acked": acked,
                  "stored": after - before, "lost": max(0, acked - (after - before))}))
PY
)
  echo "$line" | tee -a "$OUT/results.jsonl"
  LOST=$(echo "$line" | python3 -c 'import json, sys; print(json.load(sys.stdin)["lost"])')
fi
for server in $SERVERS; do
  want e || continue
  # (e) 10,000 idle connections: RSS with them held, minus RSS before.
  before=$(rss_kb "$server")
  "$LOADGEN" --addr 127.0.0.1:"$(port "$server")" "${CLIENTS[@]}" --key "$W/client.key" \
    --ca "$W/server.pem" --mode idle --concurrency 10000 --duration 600 \
    > "$W/idle.out" 2>&1 &
  idle=$!
  for _ in $(seq 600); do grep -q holding "$W/idle.out" && break; sleep 0.2; done
  held=$(grep -o '"held":[0-9]*' "$W/idle.out" | cut -d: -f2)
  after=$(rss_kb "$server")
  kill $idle; wait $idle 2>/dev/null || true
  record e "$server" loadgen \
    "{\"mode\":\"idle\",\"held\":${held:-0},\"rss_before_kb\":$before,\"rss_held_kb\":$after,\"kib_per_connection\":$(python3 -c "print(($after-$before)/max(1,${held:-0}))")}" 0
done

if [ -n "${KEEP:-}" ]; then
  echo "servers still running (W=$W, obm-gate pid $GATE_PID); press Enter to stop them"
  read -r _
fi
# The machine's limit: the crypto of one full mutual-TLS handshake, on one core.
cargo bench --locked --bench handshake_crypto -- --noplot 2>&1 | grep -E '^handshake_crypto|time:' || true
python3 bench/report.py "$OUT"
if ((LOST > 0)); then
  echo "compare.sh: $LOST notifications that obm-gate acknowledged are not in its store" >&2
  exit 1
fi
