#!/usr/bin/env python3
"""Turns bench/compare.sh's results.jsonl into the BENCHMARKS.md table, the #6 targets judged
round by round, and an SVG plot of throughput against concurrency for both servers (medians when
there are several rounds). Standard library only.

    python3 bench/report.py bench/results
"""
import json
import os
import sys

out = sys.argv[1] if len(sys.argv) > 1 else "bench/results"
rows = [json.loads(l) for l in open(os.path.join(out, "results.jsonl")) if l.strip()]


def crypto_ceiling():
    """Full mutual-TLS handshakes per second on one core, from the criterion bench."""
    base = "target/criterion/handshake_crypto"
    total_ns = 0.0
    parts = {}
    for name in ("x25519_keygen_and_agree", "ecdsa_p256_sign", "rsa2048_pss_verify"):
        path = os.path.join(base, name, "new", "estimates.json")
        if not os.path.exists(path):
            return None, {}
        ns = json.load(open(path))["mean"]["point_estimate"]
        parts[name] = ns
        total_ns += ns
    client = os.path.join(base, "client_rsa2048_pss_sign", "new", "estimates.json")
    if os.path.exists(client):
        parts["client_rsa2048_pss_sign (client side, not in the ceiling)"] = json.load(open(client))["mean"]["point_estimate"]
    return 1e9 / total_ns, parts


def find(scenario, server, client=None, concurrency=None):
    """Every round's row for this run, in round order."""
    found = []
    for r in rows:
        if r["scenario"] != scenario or r["server"] != server:
            continue
        if client and r["client"] != client:
            continue
        if concurrency is not None and r.get("concurrency") != concurrency:
            continue
        found.append(r)
    return found


def median(values):
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def med(runs, key):
    """The median of one figure over the rounds."""
    return median(r.get(key) for r in runs)


def ratios(ns, gs):
    """obm-gate/nginx per round, each from the two runs made back to back."""
    by_round = {r.get("round", 1): r for r in ns}
    return [g["rate"] / by_round[g.get("round", 1)]["rate"]
            for g in gs if by_round.get(g.get("round", 1), {}).get("rate")]


def fmt(v, spec=".0f"):
    return "–" if v is None else format(v, spec)


def spread(values, spec, unit=""):
    """The median, and with more than one round the range: 0.52× (0.44–0.60)."""
    m = median(values)
    if m is None:
        return "–"
    if len(values) < 2:
        return f"{m:{spec}}{unit}"
    return f"{m:{spec}}{unit} ({min(values):{spec}}–{max(values):{spec}})"


lines = []
rounds = max((r.get("round", 1) for r in rows), default=1)
ceiling, parts = crypto_ceiling()
cores = os.cpu_count() or 1
if ceiling:
    lines.append(
        f"Crypto ceiling (one core): {ceiling:,.0f} full mutual-TLS handshakes/s "
        + "(" + ", ".join(f"{k} {v / 1000:.1f} µs" for k, v in parts.items()) + f"); {cores} cores: {ceiling * cores:,.0f}/s."
    )
    lines.append("")
if rounds > 1:
    lines.append(f"{rounds} rounds: each figure is the median over the rounds; a ratio is the median of the "
                 "per-round ratios, with their range in brackets.")
    lines.append("")
lines.append("| scenario | client | nginx msg/s | obm-gate msg/s | ratio | nginx p50 / p99 ms | obm-gate p50 / p99 ms | CPU ms/msg nginx / obm-gate | RSS MiB nginx / obm-gate | machine idle % nginx / obm-gate |")
lines.append("|---|---|---|---|---|---|---|---|---|---|")
labels = {
    "a": "(a) full handshake per message",
    "b": "(b) new connection, resumed session",
    "c": "(c) keep-alive, 1 notification",
    "c-same-body": "(c) keep-alive, same body (obm-gate: duplicate path)",
    "d": "(d) keep-alive, 100 notifications",
}
seen = []
for r in rows:
    key = (r["scenario"], r["client"], r.get("concurrency"))
    if r["scenario"] == "e" or key in seen:
        continue
    seen.append(key)
    n = find(r["scenario"], "nginx", r["client"], r.get("concurrency"))
    g = find(r["scenario"], "obm-gate", r["client"], r.get("concurrency"))
    if not n or not g:
        continue
    label = labels.get(r["scenario"], r["scenario"])
    if r["scenario"] in ("c", "c-same-body", "a", "b") and r["client"] == "loadgen" or r["scenario"] == "c-same-body":
        label += f", c={r.get('concurrency')}"
    lat = lambda x: f"{fmt(med(x, 'p50_ms'), '.2f')} / {fmt(med(x, 'p99_ms'), '.2f')}"
    cpu = lambda x: fmt(med(x, "cpu_ms_per_msg"), ".3f")
    idle = lambda x: fmt(None if (share := med(x, "machine_idle")) is None else share * 100)
    lines.append(
        f"| {label} | {r['client']} | {med(n, 'rate'):,.0f} | {med(g, 'rate'):,.0f} | {spread(ratios(n, g), '.2f', '×')} | {lat(n)} | {lat(g)} | {cpu(n)} / {cpu(g)} | {med(n, 'rss_kb') / 1024:.0f} / {med(g, 'rss_kb') / 1024:.0f} | {idle(n)} / {idle(g)} |"
    )
lines.append("")
d = [x for x in find("d", "obm-gate") if x.get("cpu_seconds")]
if d:
    mb = lambda x: x["requests"] * x["body_bytes"] / 1e6 / x["cpu_seconds"]
    lines.append(
        f"(d) obm-gate: {median([x['rate'] * x['body_bytes'] / 1e6 for x in d]):.1f} MB/s of SOAP parsed and stored, "
        f"{median([x['cpu_seconds'] / x['seconds'] for x in d]):.2f} cores busy, "
        f"{spread([mb(x) for x in d], '.1f')} MB per CPU-second."
    )
a = find("a", "obm-gate", "loadgen")
if a and ceiling:
    rate, cpu_ms = med(a, "rate"), med(a, "cpu_ms_per_msg")
    per_server_core = 1000 / cpu_ms
    lines.append(
        f"(a) obm-gate: {rate:,.0f} handshakes/s = {rate / ceiling * 100:.0f}% of the one-core crypto ceiling "
        f"({rate / (ceiling * cores) * 100:.0f}% of {cores} cores, which the load generator shares). "
        f"Per CPU-second of the server: {per_server_core:,.0f} handshakes, each with a stored message "
        f"= {per_server_core / ceiling * 100:.0f}% of the ceiling ({cpu_ms * 1000:.0f} µs CPU each against {1e6 / ceiling:.0f} µs of crypto)."
    )
e = {server: find("e", server) for server in ("nginx", "obm-gate")}
for server, found in e.items():
    for x in found:
        lines.append(
            f"(e) {server}: {x['held']} idle mutual-TLS connections, RSS {x['rss_before_kb'] / 1024:.0f} → {x['rss_held_kb'] / 1024:.0f} MiB, "
            f"{x['kib_per_connection']:.1f} KiB per connection."
        )
for x in find("stored", "obm-gate"):
    lost = "none lost" if x["lost"] == 0 else f"{x['lost']:,} LOST"
    lines.append(
        f"Stored: obm-gate acknowledged {x['acked']:,} notifications with fresh IDs in these runs, and its store "
        f"gained {x['stored']:,} ({lost}; counted in the store by a reader of the script's own)."
    )

# The #6 targets, judged in each round on its own.
targets = []
a_ratios = ratios(find("a", "nginx", "loadgen"), find("a", "obm-gate", "loadgen"))
if a_ratios:
    targets.append(("(a) full handshakes ≥ 1.5× nginx", [f"{x:.2f}×" for x in a_ratios], [x >= 1.5 for x in a_ratios]))
if a and ceiling:
    share = [1000 / x["cpu_ms_per_msg"] / ceiling for x in a]
    targets.append(("(a) ≥ 70% of the crypto ceiling (per server CPU-second)", [f"{x * 100:.0f}%" for x in share], [x >= 0.7 for x in share]))
c_n, c_g = find("c", "nginx", "loadgen", 128), find("c", "obm-gate", "loadgen", 128)
c_ratios = ratios(c_n, c_g)
if c_ratios:
    targets.append(("(c) c=128 ≥ 0.5× nginx", [f"{x:.2f}×" for x in c_ratios], [x >= 0.5 for x in c_ratios]))
if c_g:
    targets.append(("(c) c=128 p99 < 10 ms", [f"{x['p99_ms']:.2f} ms" for x in c_g], [x["p99_ms"] < 10 for x in c_g]))
if d:
    per_cpu = [mb(x) for x in d]
    targets.append(("(d) ≥ 300 MB/s per core", [f"{x:.1f} MB/CPU-s" for x in per_cpu], [x >= 300 for x in per_cpu]))
if e["obm-gate"]:
    kib = e["obm-gate"][0]["kib_per_connection"]
    nginx_kib = e["nginx"][0]["kib_per_connection"] if e["nginx"] else None
    ok = kib <= 64 and (nginx_kib is None or kib <= nginx_kib)
    targets.append(("(e) ≤ 64 KiB per idle connection, ≤ nginx", [f"{kib:.1f} vs {fmt(nginx_kib, '.1f')} KiB"], [ok]))
if targets:
    lines.append("")
    lines.append("| target | per round | met |")
    lines.append("|---|---|---|")
    for name, shown, met in targets:
        lines.append(f"| {name} | {', '.join(shown)} | {sum(met)} of {len(met)} |")
table = "\n".join(lines) + "\n"
open(os.path.join(out, "table.md"), "w").write(table)
print(table)

# Throughput against concurrency, scenario (c) with fresh notifications, both servers.
rates = {}
for r in rows:
    if r["scenario"] == "c" and r["client"] == "loadgen":
        rates.setdefault(r["server"], {}).setdefault(r["concurrency"], []).append(r["rate"])
series = {server: [(c, median(v)) for c, v in by_c.items()] for server, by_c in rates.items()}
if series:
    W, H, L, B = 640, 400, 70, 50
    xs = sorted({c for s in series.values() for c, _ in s})
    ymax = max(v for s in series.values() for _, v in s) * 1.1
    px = lambda c: L + (xs.index(c) / max(1, len(xs) - 1)) * (W - L - 30)
    py = lambda v: H - B - v / ymax * (H - B - 30)
    colors = {"nginx": "#1f77b4", "obm-gate": "#d62728"}
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="{W / 2}" y="18" text-anchor="middle" font-size="14">Keep-alive, 1 notification per message (fresh IDs): messages/s</text>',
           f'<line x1="{L}" y1="{H - B}" x2="{W - 20}" y2="{H - B}" stroke="black"/>',
           f'<line x1="{L}" y1="{H - B}" x2="{L}" y2="20" stroke="black"/>',
           f'<text x="{W / 2}" y="{H - 10}" text-anchor="middle">concurrent connections</text>']
    for i in range(6):
        v = ymax * i / 5
        svg.append(f'<text x="{L - 6}" y="{py(v) + 4}" text-anchor="end">{v:,.0f}</text>')
        svg.append(f'<line x1="{L}" y1="{py(v)}" x2="{W - 20}" y2="{py(v)}" stroke="#ddd"/>')
    for c in xs:
        svg.append(f'<text x="{px(c)}" y="{H - B + 16}" text-anchor="middle">{c}</text>')
    for k, (name, pts) in enumerate(sorted(series.items())):
        pts = sorted(pts)
        path = " ".join(f"{px(c):.1f},{py(v):.1f}" for c, v in pts)
        svg.append(f'<polyline fill="none" stroke="{colors.get(name, "black")}" stroke-width="2" points="{path}"/>')
        for c, v in pts:
            svg.append(f'<circle cx="{px(c):.1f}" cy="{py(v):.1f}" r="3" fill="{colors.get(name, "black")}"/>')
        svg.append(f'<text x="{L + 10}" y="{40 + 16 * k}" fill="{colors.get(name, "black")}">{name}</text>')
    svg.append("</svg>")
    open(os.path.join(out, "concurrency.svg"), "w").write("\n".join(svg) + "\n")
    print(f"wrote {os.path.join(out, 'concurrency.svg')}")
