#!/usr/bin/env bash
# Where a scenario's CPU goes, stage by stage (BENCHMARKS.md, "The budget, stage by stage").
#
#   bench/stages.sh                  # scenario (d), two rounds
#   ONLY=c ROUNDS=3 bench/stages.sh  # another scenario, more rounds
#
# Builds obm-gate four times from a clean worktree of HEAD with bench/stages.patch applied;
# the patch stops the request path after one stage, chosen when building (OBM_STAGE):
#   tls-http   the body is received (TLS, HTTP, body collection) and acknowledged at once
#   xml-floor  and quick-xml's plain reader takes every event of it, and nothing else
#   parse      and the real parse, org binding and the store's rows are made, but not stored
#   full       the product as shipped: stored with group commit, then acknowledged
# Each round then runs the scenario through bench/compare.sh (obm-gate only) on the four
# builds, one after another. The table gives each stage's CPU per message, median over the
# rounds, and what it adds to the stage before it. Nothing here is shipped: the patch exists
# only in the throwaway worktree.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-2}
ONLY=${ONLY:-d}
export DUR=${DUR:-10}
OUT=${OUT:-bench/results}
STAGES="tls-http xml-floor parse full"
mkdir -p "$OUT"
: > "$OUT/stages.jsonl"

T=$(mktemp -d /tmp/obm-stages.XXXXXX)
cleanup() { git worktree remove --force "$T/src" >/dev/null 2>&1 || true; rm -rf "$T"; }
trap cleanup EXIT
git worktree add --detach "$T/src" HEAD >/dev/null
git -C "$T/src" apply "$PWD/bench/stages.patch"
for stage in $STAGES; do
  OBM_STAGE=$stage cargo build --release --locked --bin obm-gate \
    --manifest-path "$T/src/Cargo.toml" --target-dir target/stages
  cp target/stages/release/obm-gate "$T/obm-gate-$stage"
done

for round in $(seq "$ROUNDS"); do
  for stage in $STAGES; do
    echo "== stages: round $round, $stage"
    OUT="$T/out" GATE="$T/obm-gate-$stage" ONLY="$ONLY" SERVERS=obm-gate bench/compare.sh \
      > "$T/compare.log" 2>&1 || { cat "$T/compare.log" >&2; exit 1; }
    [ -s "$T/out/results.jsonl" ] || { echo "stages.sh: no results from $stage" >&2; exit 1; }
    python3 - "$stage" "$round" "$T/out/results.jsonl" >> "$OUT/stages.jsonl" <<'PY'
import json, sys
for line in open(sys.argv[3]):
    r = json.loads(line)
    if r.get("scenario") == "e":
        continue
    r.update(stage=sys.argv[1], stage_round=int(sys.argv[2]))
    print(json.dumps(r))
PY
  done
done

python3 - "$STAGES" "$OUT/stages.jsonl" <<'PY'
import json, statistics, sys
stages = sys.argv[1].split()
rows = {}
for line in open(sys.argv[2]):
    r = json.loads(line)
    key = (r["scenario"], r["client"], r.get("concurrency"), r.get("notifications", 1))
    rows.setdefault(key, {}).setdefault(r["stage"], []).append(r)
for (scenario, client, conc, notes), by_stage in sorted(rows.items(), key=str):
    print(f"\n({scenario}) {client}, concurrency {conc}, {notes} notification(s) per message")
    print("| stage | messages/s | CPU ms per message | adds | MB of SOAP per CPU-second |")
    print("|---|---|---|---|---|")
    before = 0.0
    for stage in stages:
        runs = by_stage.get(stage, [])
        if not runs:
            continue
        if any(r["cpu_ms_per_msg"] is None for r in runs):
            sys.exit(f"stages.sh: a {stage} run of ({scenario}) acknowledged no message; "
                     f"the server refused or failed every request")
        cpu = statistics.median(r["cpu_ms_per_msg"] for r in runs)
        rate = statistics.median(r["rate"] for r in runs)
        size = runs[0].get("body_bytes")
        mb = f"{size / 1e6 / (cpu / 1000):.0f}" if size else "–"
        print(f"| {stage} | {rate:,.0f} | {cpu:.4f} | +{cpu - before:.4f} | {mb} |")
        before = cpu
PY
