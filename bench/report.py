#!/usr/bin/env python3
"""Turns bench/compare.sh's results.jsonl into the BENCHMARKS.md table and an SVG plot of
throughput against concurrency for both servers. Standard library only.

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


def find(scenario, server, client=None, concurrency=None, mode=None):
    for r in rows:
        if r["scenario"] != scenario or r["server"] != server:
            continue
        if client and r["client"] != client:
            continue
        if concurrency is not None and r.get("concurrency") != concurrency:
            continue
        if mode and r.get("mode") != mode:
            continue
        return r
    return None


def fmt(v, spec=".0f"):
    return "–" if v is None else format(v, spec)


lines = []
ceiling, parts = crypto_ceiling()
cores = os.cpu_count() or 1
if ceiling:
    lines.append(
        f"Crypto ceiling (one core): {ceiling:,.0f} full mutual-TLS handshakes/s "
        + "(" + ", ".join(f"{k} {v / 1000:.1f} µs" for k, v in parts.items()) + f"); {cores} cores: {ceiling * cores:,.0f}/s."
    )
    lines.append("")
lines.append("| scenario | client | nginx msg/s | obm-gate msg/s | ratio | nginx p50 / p99 ms | obm-gate p50 / p99 ms | CPU ms/msg nginx / obm-gate | RSS MiB nginx / obm-gate |")
lines.append("|---|---|---|---|---|---|---|---|---|")
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
    ratio = g["rate"] / n["rate"] if n["rate"] else None
    label = labels.get(r["scenario"], r["scenario"])
    if r["scenario"] in ("c", "c-same-body", "a", "b") and r["client"] == "loadgen" or r["scenario"] == "c-same-body":
        label += f", c={r.get('concurrency')}"
    lat = lambda x: f"{fmt(x.get('p50_ms'), '.2f')} / {fmt(x.get('p99_ms'), '.2f')}"
    cpu = lambda x: fmt(x.get("cpu_ms_per_msg"), ".3f")
    lines.append(
        f"| {label} | {r['client']} | {n['rate']:,.0f} | {g['rate']:,.0f} | {fmt(ratio, '.2f')}× | {lat(n)} | {lat(g)} | {cpu(n)} / {cpu(g)} | {n['rss_kb'] / 1024:.0f} / {g['rss_kb'] / 1024:.0f} |"
    )
lines.append("")
d = find("d", "obm-gate")
if d and d.get("cpu_seconds"):
    mb = d["rate"] * d["body_bytes"] / 1e6
    lines.append(
        f"(d) obm-gate: {mb:.1f} MB/s of SOAP parsed and stored, {d['cpu_seconds'] / d['seconds']:.2f} cores busy, "
        f"{d['requests'] * d['body_bytes'] / 1e6 / d['cpu_seconds']:.1f} MB per CPU-second."
    )
a = find("a", "obm-gate", "loadgen")
if a and ceiling:
    per_server_core = 1000 / a["cpu_ms_per_msg"]
    lines.append(
        f"(a) obm-gate: {a['rate']:,.0f} handshakes/s = {a['rate'] / ceiling * 100:.0f}% of the one-core crypto ceiling "
        f"({a['rate'] / (ceiling * cores) * 100:.0f}% of {cores} cores, which the load generator shares). "
        f"Per CPU-second of the server: {per_server_core:,.0f} handshakes, each with a stored message "
        f"= {per_server_core / ceiling * 100:.0f}% of the ceiling ({a['cpu_ms_per_msg'] * 1000:.0f} µs CPU each against {1e6 / ceiling:.0f} µs of crypto)."
    )
for server in ("nginx", "obm-gate"):
    e = find("e", server)
    if e:
        lines.append(
            f"(e) {server}: {e['held']} idle mutual-TLS connections, RSS {e['rss_before_kb'] / 1024:.0f} → {e['rss_held_kb'] / 1024:.0f} MiB, "
            f"{e['kib_per_connection']:.1f} KiB per connection."
        )
table = "\n".join(lines) + "\n"
open(os.path.join(out, "table.md"), "w").write(table)
print(table)

# Throughput against concurrency, scenario (c) with fresh notifications, both servers.
series = {}
for r in rows:
    if r["scenario"] == "c" and r["client"] == "loadgen":
        series.setdefault(r["server"], []).append((r["concurrency"], r["rate"]))
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
