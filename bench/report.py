"""bench.py's report: one table of every number, the issue's targets (met or not) under it, then
the details (start-up and idle tests, every wrk run, commands, machine)."""

from __future__ import annotations

import os
import platform
import statistics
import sys
from pathlib import Path

from harness import ROOT
from harness.processes import cmd_out, source_state
from nmc.containers import LABEL_CLUSTER
from ws_echo import CONFIGS as WS_CONFIGS, SIZE, SOCKETS, command as ws_command, describe_errors

NAN = float("nan")
NAMES = {"direct": "direct (1 replica)", "nginx-w1": "nginx-w1", "naive": "naive (before)",
         "pywsgi-floor": "pywsgi-floor (pywsgi + one bare exchange: nmc's design, no proxy; c64 only)",
         "nmc": "**nmc** (./nmc_server.py)",
         "gunicorn-w2": "**gunicorn-w2** (nmc.wsgi:app, own 2 replicas)",
         "pm2-i2": "pm2-i2 (PM2 cluster, 2 workers, no Docker: anchor)",
         "http-proxy": "http-proxy (node, keep-alive agent)",
         "nmc-tls": "**nmc-tls** (nmc with --certfile, the same 2 replicas; c64 only)",
         "nginx-tls": "nginx-tls (nginx-w1 with listen ssl; c64 only)"}
LOAD_NAMES = {"c64": "GET small c64", "c256": "GET small c256", "get10": "GET 10 MiB c4",
              "post10": "POST 10 MiB c4", "fresh": "GET small c64, new connection each"}
TLS_CONFIGS = {"nmc-tls": "nmc", "nginx-tls": "nginx-w1"}  # each with its plain twin
FLAT_MIB = 10.0  # "flat" RSS during the 10 MiB runs: it grew by less than one body


def med(runs: list[dict], key: str) -> float:
    vals = [r[key] for r in runs if key in r and r[key] == r[key]]
    return statistics.median(vals) if vals else NAN


def fmt(x: float, nd: int = 0) -> str:
    return "—" if x != x else f"{x:,.{nd}f}"


def ratio(a: float, b: float) -> str:
    return "—" if a != a or b != b or b == 0 else f"{a / b:.2f}"


def _max(runs: list[dict], key: str) -> float:
    vals = [r[key] for r in runs if key in r and r[key] == r[key]]
    return max(vals) if vals else NAN


def start_medians(starts: list[dict], what: str) -> dict[int, float]:
    """Median seconds to ready per replica count; NaN when any attempt failed."""
    out = {}
    for n in (1, 8):
        tries = [s for s in starts if s["what"] == what and s["n"] == n]
        ok = [s["ready_s"] for s in tries if "ready_s" in s and "why" not in s]
        out[n] = statistics.median(ok) if tries and len(ok) == len(tries) else NAN
    return out


def targets(args, rows, rss1, idle, starts, skipped) -> list[str]:
    """The issue's targets, each: met / NOT met / not measured, with the numbers."""
    def get(cfg, load):
        return rows.get((cfg, load), [])

    def missing(*cfgs) -> str | None:
        for c in cfgs:
            if c not in args.configs:
                return f"{c} " + (f"skipped: {skipped[c]}" if c in skipped else "not run (--configs)")
        return None

    out = []

    def line(what: str, ok: bool | None, value: str, why: str | None = None) -> None:
        mark = "not measured" if ok is None else ("met" if ok else "**NOT met**")
        out.append(f"- {mark}: {what}: {why if ok is None and why else value}")

    # issue 15, "Faster than node's own proxy, per core"
    cpu = med(get("nmc", "c64"), "us_proxy")
    floor = med(get("pywsgi-floor", "c64"), "us_proxy")
    line("nmc proxy CPU ≤ 130 µs per small GET at c64", None if cpu != cpu else cpu <= 130,
         f"{cpu:.0f} µs/req" + ("" if floor != floor else
                                f" (pywsgi-floor, the least a relay of nmc's design spends: "
                                f"{floor:.0f} µs/req)"),
         missing("nmc"))
    nmc64, hp64 = med(get("nmc", "c64"), "rps"), med(get("http-proxy", "c64"), "rps")
    p99 = med(get("nmc", "c64"), "p99")
    why = missing("nmc", "http-proxy")
    x = nmc64 / hp64 if not why and hp64 else NAN
    line("nmc ≥ 1.2 × http-proxy's req/s at c64, with p99 ≤ 25 ms",
         None if x != x else (x >= 1.2 and p99 <= 25),
         f"{x:.3f} × ({fmt(nmc64)} against {fmt(hp64)} req/s), p99 {p99:.1f} ms", why)
    g_cpu = med(get("gunicorn-w2", "c64"), "us_proxy")
    why = missing("nmc", "gunicorn-w2")
    x = g_cpu / cpu if not why and cpu else NAN
    line("gunicorn -w 2 CPU per request ≤ 1.15 × nmc's (c64)", None if x != x else x <= 1.15,
         f"{x:.2f} × ({fmt(g_cpu)} against {fmt(cpu)} µs/req)", why)
    i = idle.get("nmc", {})
    kib = i.get("kib_per_conn", NAN)
    full = i.get("opened") == i.get("n")
    line(f"nmc ≤ 8 kB per idle keep-alive client connection at {i.get('n', 5000):,}",
         None if kib != kib else (kib <= 8 and full),
         f"{kib:.1f} kB" + ("" if full else f" (only {i.get('opened')} of {i.get('n')} opened)"),
         missing("nmc") or ("--no-idle" if args.no_idle else i.get("error", "no result")))
    why = missing("nmc", "nginx-w1")
    parts, oks = [], []
    for load, word in (("get10", "GET"), ("post10", "POST")):
        a, b = med(get("nmc", load), "mibs"), med(get("nginx-w1", load), "mibs")
        x = a / b if b else NAN
        oks.append(None if x != x else x >= 0.95)
        parts.append(f"{word} {x:.3f} ×")
    grow = _max(get("nmc", "get10") + get("nmc", "post10"), "rss_growth")
    oks.append(None if grow != grow else grow < FLAT_MIB)
    parts.append(f"RSS grew by at most {grow:.1f} MiB during them")
    ok = None if why or None in oks else all(oks)
    line(f"nmc 10 MiB GET and POST ≥ 0.95 × nginx-w1, with flat RSS (grows < {FLAT_MIB:g} MiB)",
         ok, ", ".join(parts), why)
    fresh, hp = med(get("nmc", "fresh"), "rps"), med(get("http-proxy", "fresh"), "rps")
    why = missing("nmc", "http-proxy")
    x = fresh / hp if not why and hp else NAN
    line("nmc ≥ 1.0 × http-proxy with a new connection per request (c64)",
         None if x != x else x >= 1.0, f"{x:.3f} × ({fmt(fresh)} against {fmt(hp)} req/s)", why)
    s, d = start_medians(starts, "nmc"), start_medians(starts, "docker")
    gaps = {n: s[n] - d[n] for n in (1, 8)}
    known = all(g == g for g in gaps.values())
    line("nmc ready within 0.3 s of `docker run` alone, at 1 and at 8 replicas",
         None if not known else all(g <= 0.3 for g in gaps.values()),
         f"1: {s[1]:.2f} s against {d[1]:.2f} s (+{gaps[1]:.2f}); 8: {s[8]:.2f} s against "
         f"{d[8]:.2f} s (+{gaps[8]:.2f})",
         "--no-startup" if args.no_startup else "a start-up attempt failed (see below)")
    # standing ones
    errs = sum(r["err"] for r in get("nmc", "c256"))
    line("nmc 0 errors at c256", None if not get("nmc", "c256") else errs == 0,
         f"{errs} in {sum(r['reqs'] for r in get('nmc', 'c256')):,} requests", missing("nmc"))
    return out


FRESH_NAMES = {"nginx-w1": "nginx-w1", "nmc": "**nmc**", "gunicorn-w2": "**gunicorn-w2**",
               "pm2-i2": "pm2-i2 (no Docker)", "http-proxy": "http-proxy"}


def fresh_section(args, rows) -> list[str]:
    """A new connection per request over plain HTTP (-H 'Connection: close'): the relays side by
    side, and nmc against node's http-proxy (the issue's target: at least as fast)."""
    ran = [cfg for cfg in FRESH_NAMES if rows.get((cfg, "fresh"))]
    if not ran:
        return []
    hp = med(rows.get(("http-proxy", "fresh"), []), "rps")
    L = ["\n## A new connection per request (plain HTTP)\n",
         "GET /healthz at -c64 with `Connection: close`: every request a TCP connect, one answer, "
         "a close (health checkers, webhooks). x http-proxy: req/s against node's http-proxy's.", "",
         "| config | req/s | p50 / p99 ms | errors | proxy CPU µs/req | x http-proxy req/s |",
         "|---|---:|---:|---:|---:|---:|"]
    for cfg in ran:
        runs = rows[(cfg, "fresh")]
        L.append(f"| {FRESH_NAMES[cfg]} | {fmt(med(runs, 'rps'))} | {fmt(med(runs, 'p50'), 2)} / "
                 f"{fmt(med(runs, 'p99'), 1)} | {sum(r['err'] for r in runs)} | "
                 f"{fmt(med(runs, 'us_proxy'), 1)} | {ratio(med(runs, 'rps'), hp)} |")
    L.append("")
    return L


WS_NAMES = {"direct": "direct (1 replica)", "nginx-w1": "nginx-w1", "nmc": "**nmc**",
            "http-proxy": "http-proxy"}


def ws_section(args, ws, ws_why, skipped) -> list[str]:
    """The WebSocket echo: messages/s through each relay and straight to a replica, and nmc
    against node's http-proxy."""
    L = ["\n## WebSocket echo\n"]
    if ws_why:
        return L + [f"Not run: {ws_why}.", ""]
    L += [f"bench/node/ws_echo_client.js (one process of the host's node "
          f"{cmd_out(['node', '--version'])}; `net` and RFC 6455 framing by hand) "
          f"opens {SOCKETS} WebSockets to /ws first (each one upgrade, a 101 with the right "
          f"Sec-WebSocket-Accept), then on each, for {args.duration:g} s: one {SIZE}-byte text "
          "message, masked as a client's must be, and a wait for its echo, checked byte for byte "
          f"({SOCKETS} in flight at any time). messages/s = echoes ÷ seconds from the first send "
          "to the last echo; round trip = send to echo; CPU µs/msg = CPU of the proxy's process "
          "tree (and of docker-proxy, of the replicas) during the messages only, not the "
          "upgrades, ÷ echoes: each echo is one frame up and one down through the relay. errors "
          "= sockets that failed to open, closed early or echoed something else. client CPU = "
          "the node client's share of one core: near 100 % it, not the relay, would be the "
          "limit. The relays spread the sockets over the 2 replicas; direct puts all on one. "
          f"Medians of {args.reps} repetition(s), interleaved with the wrk runs.", "",
          "| config | sockets open | messages/s | round trip p50 / p99 ms | errors "
          "| proxy CPU µs/msg | docker-proxy µs/msg | replicas µs/msg | client CPU % "
          "| x direct messages/s |",
          "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    direct = med(ws.get("direct", []), "mps")
    for cfg in (c for c in WS_CONFIGS if c in args.asked):
        runs = ws.get(cfg, [])
        if cfg not in args.configs or not runs:
            L.append(f"| {WS_NAMES[cfg]} | " + (f"skipped: {skipped.get(cfg, 'not run')}"
                                                 if cfg not in args.configs else "no run") +
                     " |" + " |" * 8)
            continue
        L.append("| " + " | ".join([
            WS_NAMES[cfg], f"{min(r['opened'] for r in runs)} / {SOCKETS}",
            fmt(med(runs, "mps")), f"{fmt(med(runs, 'p50'), 2)} / {fmt(med(runs, 'p99'), 1)}",
            str(sum(r["err"] for r in runs)),
            fmt(med(runs, "us_proxy"), 1) if cfg != "direct" else "— (no proxy)",
            fmt(med(runs, "us_dproxy"), 1), fmt(med(runs, "us_node"), 1),
            fmt(med(runs, "pct_client")), ratio(med(runs, "mps"), direct)]) + " |")
    L.append("")

    def of(cfg, key):
        return med(ws.get(cfg, []), key)
    if ws.get("nmc") and ws.get("http-proxy"):
        nmc, hp, ng = of("nmc", "mps"), of("http-proxy", "mps"), of("nginx-w1", "mps")
        L.append(f"nmc / http-proxy messages/s = {ratio(nmc, hp)} ({fmt(nmc)} against {fmt(hp)}); "
                 f"proxy CPU per message nmc / http-proxy = "
                 f"{ratio(of('nmc', 'us_proxy'), of('http-proxy', 'us_proxy'))}" +
                 (f"; nmc / nginx-w1 messages/s = {ratio(nmc, ng)}" if ws.get("nginx-w1") else "")
                 + ".")
    else:
        L.append("nmc / http-proxy messages/s: — (" +
                 ", ".join(c for c in ("nmc", "http-proxy") if not ws.get(c)) + " not measured).")
    L.append("")
    errors = [line for cfg, runs in ws.items() if (line := describe_errors(cfg, runs))]
    L += [f"- {line}" for line in errors] + ([""] if errors else [])
    if not ws:
        return L
    L += ["| config | rep | messages | messages/s | p50 / p99 ms | errors | sockets per replica "
          "(port) | proxy CPU % | client CPU % | machine busy % | unattributed % | close |",
          "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---|"]
    for cfg, runs in ws.items():
        for r in runs:
            spread = ", ".join(f"{name.rsplit('-', 1)[-1]}: {n}" for name, n in
                               sorted(r["replicas"].items()))
            L.append("| " + " | ".join([
                cfg, str(r["rep"]), f"{r['messages']:,}", fmt(r["mps"]),
                f"{fmt(r['p50'], 2)} / {fmt(r['p99'], 1)}", str(r["err"]), spread or "—",
                fmt(r.get("pct_proxy", NAN)) if cfg != "direct" else "—",
                fmt(r.get("pct_client", NAN)), fmt(r.get("machine_busy_pct", NAN)),
                fmt(r.get("pct_other", NAN)), r.get("closed", "—")]) + " |" +
                (f" failed: {r['failed']}" if "failed" in r else "") +
                (" (stopped at the client's cap on messages)" if r.get("capped") else ""))
    L.append("")
    return L


def tls_ratios(rows) -> str:
    """nmc TLS / nmc plain and nginx TLS / nginx plain: req/s and CPU per request at c64."""
    def of(cfg, key):
        return med(rows.get((cfg, "c64"), []), key)
    rps = {c: ratio(of(c, "rps"), of(p, "rps")) for c, p in TLS_CONFIGS.items()}
    cpu = {c: ratio(of(c, "us_proxy"), of(p, "us_proxy")) for c, p in TLS_CONFIGS.items()}
    return (f"nmc TLS / nmc plain req/s = {rps['nmc-tls']}; nginx TLS / nginx plain = "
            f"{rps['nginx-tls']} (c64 over keep-alive; proxy CPU µs/req: nmc TLS / plain = "
            f"{cpu['nmc-tls']}, nginx TLS / plain = {cpu['nginx-tls']}).")


def tls_section(args, run, rows) -> list[str]:
    """The HTTPS rows kept alive and with a new connection per request, beside their twins."""
    L = ["\n## HTTPS\n"]
    L.append("| config | connections | req/s | p50 / p99 ms | errors | proxy CPU µs/req "
             "| docker-proxy µs/req | replicas µs/req | x plain req/s | x plain CPU |")
    L.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    extra = {}
    for cfg, twin in TLS_CONFIGS.items():
        if cfg not in args.configs:
            continue
        plain = rows.get((twin, "c64"), [])
        for load, how in (("c64", "kept alive"), ("fresh", "new TLS connection per request")):
            runs = rows.get((cfg, load), [])
            L.append("| " + " | ".join([
                cfg, how, fmt(med(runs, "rps")),
                f"{fmt(med(runs, 'p50'), 2)} / {fmt(med(runs, 'p99'), 1)}",
                str(sum(r["err"] for r in runs)) if runs else "—",
                fmt(med(runs, "us_proxy"), 1), fmt(med(runs, "us_dproxy"), 1),
                fmt(med(runs, "us_node"), 1),
                ratio(med(runs, "rps"), med(plain, "rps")),
                ratio(med(runs, "us_proxy"), med(plain, "us_proxy")),
            ]) + " |")
        extra[cfg] = (med(rows.get((cfg, "fresh"), []), "us_proxy") -
                      med(rows.get((cfg, "c64"), []), "us_proxy"))
    L.append("")
    L.append("x plain = against the plain twin kept alive at c64 (nmc-tls: nmc; nginx-tls: "
             "nginx-w1), same run. A new connection per request costs the proxy " +
             "; ".join(f"{c} {fmt(x)} µs" for c, x in extra.items()) +
             " more CPU than a kept-alive TLS one: TCP accept and close, the TLS handshake (full: "
             "wrk resumes no session), and for nginx its new upstream pick.")
    L.append("")
    L.append(f"Certificate: self-signed, {run.cert_key} for localhost and 127.0.0.1, made by the "
             "run (temp folder, removed at the end); wrk does not check it, the readiness checks "
             "do (Python's ssl with it as the only trust anchor). nmc-tls: ./nmc_server.py "
             "--certfile/--keyfile (nmc/tls.py: Python's default server context, TLS 1.2+, ALPN "
             "http/1.1; OpenSSL's own in-process session cache and 2 TLS 1.3 tickets, as Python "
             "leaves them), a second process with nmc's --name and --keep: it adopts nmc's two "
             "replicas and leaves them on exit. nginx-tls: nginx-w1's configuration with `listen "
             "ssl` and Mozilla's intermediate settings (TLS 1.2 and 1.3, ECDHE suites, "
             "`ssl_session_cache shared:MozSSL:10m`, `ssl_session_timeout 1d`, "
             "`ssl_session_tickets off`). Negotiated by a default client: " +
             "; ".join(f"{c} {v}" for c, v in run.tls.items()) + ".")
    return L


def render(*, args, run, rows, rss0, rss1, idle, starts, notes, skipped, interrupted, tails,
           t_ready, took, started_at, wrk, nginx, node_version, ws, ws_why) -> str:
    ng = {k: med(rows.get(("nginx-w1", k), []), "rps" if k in ("c64", "c256") else "mibs")
          for k in ("c64", "c256", "get10", "post10")}
    ng_cpu = med(rows.get(("nginx-w1", "c64"), []), "us_proxy")
    nmc_start, docker_start = start_medians(starts, "nmc"), start_medians(starts, "docker")
    B = run.port.get("direct", 0)
    L = [f"# nmc benchmark, {started_at.strftime('%Y-%m-%d %H:%M:%S UTC')}"
         f"{' (--quick)' if args.quick else ''}", ""]
    L.append(f"{args.reps} interleaved repetition(s) (config order rotated each time), medians; "
             f"wrk -t1, {args.duration:g} s per run; small = GET /healthz at -c64 and -c256; "
             f"10 MiB = GET /big?mb=10 and POST /echo with a 10 MiB body, -c4. nginx-w1, naive, "
             f"pywsgi-floor, nmc and http-proxy relay to the same 2 replicas (cluster `{run.name}`, "
             f"127.0.0.1:{B} and {B + 1}, through Docker's userland proxy); gunicorn-w2 to its "
             f"own 2 replicas of the same image (`{run.g_name}`); pm2-i2 runs the site itself; "
             f"nmc-tls and nginx-tls are nmc and nginx-w1 over HTTPS (see HTTPS below).")
    L.append("")
    L.append("| config | c64 req/s | c64 p50 / p99 ms | c256 req/s | c256 p50 / p99 ms "
             "| errors c64 / c256 / 10 MiB | CPU µs/req c64 / c256 | x nginx req/s c64 / c256 "
             "| x nginx CPU c64 | docker-proxy µs/req c64 | replicas µs/req c64 | total µs/req c64 "
             "| GET 10 MiB MiB/s (x nginx) | POST 10 MiB MiB/s (x nginx) "
             "| RSS MiB start → after load | RSS growth in 10 MiB runs, MiB "
             f"| RSS MiB with {5000:,} idle (kB/conn) | start 1 / 8 replicas, s |")
    L.append("|---|" + "---:|" * 17)
    for cfg in args.asked:
        if cfg not in args.configs:
            why = skipped.get(cfg, "not run")
            L.append(f"| {NAMES[cfg]} | skipped: {why} |" + " |" * 16)
            continue
        a, b = rows.get((cfg, "c64"), []), rows.get((cfg, "c256"), [])
        big = rows.get((cfg, "get10"), []) + rows.get((cfg, "post10"), [])
        proxy = cfg != "direct"
        cpu64, cpu256 = med(a, "us_proxy"), med(b, "us_proxy")
        i = idle.get(cfg)
        if not proxy:
            idle_cell = "— (a replica)"
        elif i is None:
            idle_cell = "— (--no-idle)" if args.no_idle else "—"
        elif "error" in i:
            idle_cell = f"failed: {i['error']}"
        else:
            idle_cell = (f"{i['rss_open'] / 1024:,.1f} ({i['kib_per_conn']:.1f})" +
                         (f", {i['failed']} failed" if i["failed"] else ""))
        if cfg == "nmc" and starts:
            start_cell = (f"{fmt(nmc_start[1], 2)} / {fmt(nmc_start[8], 2)} (docker run alone "
                          f"{fmt(docker_start[1], 2)} / {fmt(docker_start[8], 2)})")
        else:
            start_cell = "—"
        rss_cell = "—"
        if proxy:
            rss_cell = f"{fmt(rss0.get(cfg, NAN), 1)} → {fmt(rss1.get(cfg, NAN), 1)}"
            if cfg == "pm2-i2":
                rss_cell += (f" (daemon; workers {fmt(rss0.get('pm2-workers', NAN), 1)} → "
                             f"{fmt(rss1.get('pm2-workers', NAN), 1)})")
        L.append("| " + " | ".join([
            NAMES[cfg],
            fmt(med(a, "rps")), f"{fmt(med(a, 'p50'), 2)} / {fmt(med(a, 'p99'), 1)}",
            fmt(med(b, "rps")), f"{fmt(med(b, 'p50'), 2)} / {fmt(med(b, 'p99'), 1)}",
            " / ".join(str(sum(r["err"] for r in runs)) if runs else "—" for runs in (a, b, big)),
            f"{fmt(cpu64, 1)} / {fmt(cpu256, 1)}" if proxy else "— (no proxy)",
            f"{ratio(med(a, 'rps'), ng['c64'])} / {ratio(med(b, 'rps'), ng['c256'])}",
            ratio(cpu64, ng_cpu) if proxy else "—",
            "— (no Docker)" if cfg == "pm2-i2" else fmt(med(a, "us_dproxy"), 1),
            fmt(med(a, "us_node"), 1), fmt(med(a, "us_total"), 1),
            *(f"{fmt(med(rows.get((cfg, k), []), 'mibs'))} "
              f"({ratio(med(rows.get((cfg, k), []), 'mibs'), ng[k])})" for k in ("get10", "post10")),
            rss_cell,
            fmt(_max(big, "rss_growth"), 1) if proxy else "—",
            idle_cell, start_cell,
        ]) + " |")
    L.append("")
    if any(c in args.configs for c in TLS_CONFIGS):
        L.append(tls_ratios(rows))
        L.append("")
    L.append("Targets (from the issue; this run, medians):")
    L.append("")
    L += targets(args, rows, rss1, idle, starts, skipped)
    for cfg in args.configs:
        for load in LOAD_NAMES:
            runs = rows.get((cfg, load), [])
            non2xx, sock = sum(r["non2xx"] for r in runs), sum(r["sock_err"] for r in runs)
            if non2xx or sock:
                kinds = {}
                for r in runs:
                    for k, v in r.get("sock", {}).items():
                        kinds[k] = kinds.get(k, 0) + v
                detail = ", ".join(f"{k} {v}" for k, v in kinds.items() if v)
                notes.append(f"{cfg} {LOAD_NAMES[load]}: {non2xx} non-2xx answer(s) and {sock} "
                             f"socket error(s){f' ({detail})' if detail else ''} in "
                             f"{sum(r['reqs'] for r in runs):,} requests")
    if rows.get(("naive", "post10")) and sum(r["non2xx"] for r in rows[("naive", "post10")]):
        notes.append("naive's POSTs fail by design of the 'before' line: requests sends the "
                     "client's body (data=wsgi.input) with both Content-Length and "
                     "Transfer-Encoding: chunked, which node refuses with a 400")
    if notes or interrupted:
        L.append("")
        L += [f"- {n}" for n in notes]
        if interrupted:
            L.append(f"\n**Interrupted by {interrupted}: partial results.**")
    L.append("")
    L.append(
        "Columns: errors = wrk socket errors (connect/read/write/timeout) + non-2xx answers, "
        "summed over the runs (10 MiB: GET and POST). CPU µs/req = utime+stime of the proxy's "
        "process tree (nginx master+worker; the Python process with its threads; gunicorn's "
        "master + 2 workers; the node process of http-proxy; for pm2-i2 the PM2 daemon only) ÷ "
        "requests; x nginx = ratio to nginx-w1 in the same run (req/s and MiB/s: higher is "
        "better; CPU: how many times nginx's CPU per request). docker-proxy = the "
        "`docker-proxy -host-port` processes in the path (one for direct, two for the relays); "
        "replicas = the two containers' node processes; total = the three (what the machine "
        "spends per request, wrk and the kernel's loopback work aside). MiB/s = answers 2xx × "
        "10 MiB per second (the POST's bytes go up, its answer is the echo's small JSON; the "
        "replica hashes the body, so direct, one replica, is not the limit for POST). "
        "RSS = VmRSS of the proxy's process tree (kB and MB as /proc counts them: KiB, MiB) "
        "after start-up and after all load; growth in 10 MiB runs = the most its RSS, sampled "
        "every 0.1 s, rose above its value at the start of a 10 MiB run (\"flat\": less than "
        "one body, while 4 are in flight). Idle: RSS with 5,000 keep-alive client connections "
        "open, each after one GET, and (RSS with them − RSS before) ÷ 5,000. Start: median "
        "seconds from starting ./nmc_server.py -n 1 / -n 8 (image built) to its \"serving "
        "on\" line; `docker run` alone = the same count of `docker run -d` at once until each "
        "answers /healthz: the floor under nmc's. The CPU % of the machine during each run is "
        "in the per-run table below (\"unattributed\" = what no measured process accounts "
        "for: the kernel's loopback work, dockerd, anything else running; a high value flags a "
        "run disturbed by other load).")
    if "pm2-i2" in args.configs:
        L.append("")
        L.append("pm2-i2 is an anchor, not a like-for-like: PM2 cluster mode runs the site itself "
                 "(nodejs/server.js, 2 workers on the host's node, outside Docker), so there is no "
                 "proxy and no docker-proxy in its path: the daemon (cluster primary) accepts each "
                 "connection once and hands its fd to a worker. Its CPU µs/req column is the PM2 "
                 "daemon alone (front); its replicas column is its 2 workers; total = the two; its "
                 "idle RSS counts daemon + workers (the connections live in the workers). "
                 "Balance is per connection, not per request.")
    if "pywsgi-floor" in args.configs:
        L.append("")
        L.append("pywsgi-floor is no proxy (bench/floor_relay.py): gevent.pywsgi with nmc's fixes "
                 "for small answers and a WSGI callable that writes the request line and a Host "
                 "header to a replica on a kept-alive socket and hands its answer on, with no "
                 "checks, pool, counting or log. Its CPU per request is the least that a relay "
                 "built as nmc is (gevent, pywsgi, a WSGI callable) spends; nmc's minus it is "
                 "what nmc itself adds.")
    if "gunicorn-w2" in args.configs:
        L.append("")
        L.append("gunicorn-w2 relays to replicas of its own (its supervising worker starts and "
                 "removes them), so its docker-proxy and replicas columns are those two; it "
                 f"answered through its port {fmt(t_ready.get('gunicorn-w2', NAN), 1)} s after "
                 f"the run began (nmc: {fmt(t_ready.get('nmc', NAN), 1)} s).")

    L += fresh_section(args, rows)
    if any(c in args.configs for c in TLS_CONFIGS):
        L += tls_section(args, run, rows)
    L += ws_section(args, ws, ws_why, skipped)

    if starts:
        L.append("\n## Start-up\n")
        L.append("| rep | what | replicas | ready s | stop | note |")
        L.append("|---:|---|---:|---:|---|---|")
        for s in starts:
            L.append(f"| {s['rep']} | {'./nmc_server.py' if s['what'] == 'nmc' else 'docker run -d'} "
                     f"| {s['n']} | {fmt(s.get('ready_s', NAN), 2)} | {s.get('stop', 'docker rm -f')} "
                     f"| {s.get('why', '')}"
                     f"{'; ' + str(s['leftovers']) + ' left, removed' if s.get('leftovers') else ''} |")

    if idle:
        L.append(f"\n## {5000:,} idle keep-alive connections\n")
        L.append("| config | opened (failed) | in s | RSS MiB before → with them → after hold → "
                 "after closing | kB/conn | fresh request ms median / max | request on an idle "
                 "one ms | still answering after the hold |")
        L.append("|---|---:|---:|---:|---:|---:|---:|---:|")
        for cfg, i in idle.items():
            if "error" in i:
                L.append(f"| {cfg} | failed: {i['error']} |" + " |" * 6)
                continue
            L.append("| " + " | ".join([
                cfg, f"{i['opened']:,} ({i['failed']})", fmt(i["t_open"], 1),
                " → ".join(fmt(i[k] / 1024, 1) for k in ("rss_before", "rss_open", "rss_hold",
                                                          "rss_closed")),
                fmt(i["kib_per_conn"], 1),
                f"{fmt(i['fresh_ms'], 2)} / {fmt(i['fresh_max_ms'], 2)} ({i['fresh_ok']}/20 ok)",
                fmt(i.get("reuse_ms", NAN), 2),
                f"{i['alive']}/{i['sampled']} sampled after {i['hold']:g} s",
            ]) + " |" + (f" first failure: {i['why']}" if i["failed"] else ""))

    L.append("\n## Per run\n")
    L.append("| config | load | rep | req/s | p50 ms | p99 ms | MiB/s | errors | proxy CPU % | "
             "proxy µs/req | docker-proxy CPU % / µs/req | replicas CPU % | wrk CPU % | "
             "machine busy % | unattributed % | RSS growth MiB |")
    L.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for cfg in args.configs:
        proxy = cfg != "direct"
        for load in LOAD_NAMES:
            for r in rows.get((cfg, load), []):
                L.append("| " + " | ".join([
                    cfg, LOAD_NAMES[load], str(r.get("rep", "")), fmt(r["rps"]), fmt(r["p50"], 2),
                    fmt(r["p99"], 1), fmt(r["mibs"]) if load in ("get10", "post10") else "",
                    str(r["err"]),
                    fmt(r.get("pct_proxy", NAN)) if proxy else "—",
                    fmt(r.get("us_proxy", NAN), 1) if proxy else "—",
                    "— (no Docker)" if cfg == "pm2-i2" else
                    f"{fmt(r.get('pct_dproxy', NAN))} / {fmt(r.get('us_dproxy', NAN), 1)}",
                    fmt(r.get("pct_node", NAN)), fmt(r.get("pct_wrk", NAN)),
                    fmt(r["machine_busy_pct"]), fmt(r.get("pct_other", NAN)),
                    fmt(r.get("rss_growth", NAN), 1),
                ]) + " |" + (f" wrk failed: {r['failed']!r}" if "failed" in r else ""))

    L.append("\n## Commands\n")
    L.append("```")
    exe = (Path(sys.executable).relative_to(ROOT) if str(sys.executable).startswith(str(ROOT))
           else sys.executable)
    L.append(f"make bench{' QUICK=1' if args.quick else ''}   ->   {exe} bench/bench.py "
             f"{' '.join(sys.argv[1:])}")
    for cfg in args.configs:
        L.append(f"{cfg:11} {run.commands.get(cfg, '')}")
    warm = 1 if args.quick else 2
    d = f"{args.duration:g}"
    L.append(f"warm-up     wrk -t1 -c256 -d{warm}s http://127.0.0.1:PORT/healthz   (once per config)")
    L.append(f"small       wrk -t1 -c64 -d{d}s --latency http://127.0.0.1:PORT/healthz")
    L.append(f"            wrk -t1 -c256 -d{d}s --latency http://127.0.0.1:PORT/healthz")
    L.append(f"GET 10 MiB  wrk -t1 -c4 -d{d}s --latency --timeout 30s "
             f"'http://127.0.0.1:PORT/big?mb=10'")
    L.append(f"POST 10 MiB wrk -t1 -c4 -d{d}s --latency --timeout 30s -s post10m.lua "
             f"http://127.0.0.1:PORT/echo   (wrk.method = \"POST\", wrk.body = 10 MiB of 'x')")
    if any(c in args.configs for c in TLS_CONFIGS):
        L.append(f"HTTPS       wrk -t1 -c64 -d{d}s --latency https://127.0.0.1:PORT/healthz   "
                 "(nmc-tls, nginx-tls: c64 and new connection only)")
        L.append(f"            wrk -t1 -c64 -d{d}s --latency -H 'Connection: close' "
                 "https://127.0.0.1:PORT/healthz   (a new connection per request)")
        L.append(f"certificate {run.commands.get('certificate', '')}")
    if ws:
        L.append(f"WebSocket   node {' '.join(ws_command('PORT', args.duration))}   (PORT SOCKETS "
                 "SECONDS SIZE MAX-MESSAGES OPEN-LIMIT DRAIN-LIMIT; " + ", ".join(ws) + ")")
    L.append("order       per repetition: small c64 for every config, then c256, GET 10 MiB, "
             "POST 10 MiB, new connections (TLS configs), the WebSocket echo; config order "
             "rotated by one each repetition; then the start-up test")
    if starts:
        L.append(f"start-up    {starts[0].get('command', '').replace(' -n 1 ', ' -n N ')}"
                 "   (N = 1, 8; throwaway name, free ports; SIGTERM after)")
        L.append(f"            docker run -d --name NAME-PORT --label {LABEL_CLUSTER}=NAME "
                 "-e NMC_REPLICA=NAME-PORT -p 127.0.0.1:PORT:8080 nodejs.org   (x N at once)")
    if idle:
        L.append(f"idle        bench/idle_conns.py: {5000:,} connections, each GET /healthz "
                 f"keep-alive once, held {args.hold:g} s (after all load)")
    L.append("```")

    L.append("\n## Machine and versions\n")
    model = next((line.split(":", 1)[1].strip() for line in
                  Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")),
                 "?")
    try:
        import importlib.metadata as md
        pyver = ", ".join(f"{p} {md.version(p)}" for p in ("gevent", "greenlet", "requests",
                                                           "urllib3", "gunicorn"))
    except Exception:
        pyver = "?"
    load = Path("/proc/loadavg").read_text().split()[:3]
    L.append(f"- nproc {os.cpu_count()}, CPU `{model}`, kernel {platform.release()}, "
             f"load average at the end {' '.join(load)}")
    wrk_v = cmd_out([wrk, "-v"])
    L.append(f"- {wrk_v.splitlines()[0] if wrk_v else 'wrk ?'}; "
             f"{cmd_out([nginx, '-v']) if nginx else 'nginx: not installed'}; "
             f"Docker {cmd_out(['docker', 'version', '-f', '{{.Server.Version}}'])}; "
             f"node in the image {node_version}" +
             (f"; host node {run.versions.get('node', '?')}, pm2 {run.versions.get('pm2', '?')}, "
              f"http-proxy {run.versions.get('http-proxy', '?')} (npm, temp folder)"
              if run.versions else ""))
    L.append(f"- Python {platform.python_version()}, {pyver}; "
             f"{cmd_out([sys.executable, str(ROOT / 'nmc_server.py'), '-v'])}")
    L.append(f"- source: {source_state()}")
    if run.pm2_stop != "not started":
        L.append(f"- pm2 stop: {run.pm2_stop}")
    for cfg, cluster in (("nmc", run.name), ("gunicorn-w2", run.g_name)):
        if cfg in run.exits:
            left = run.leftovers.get(cluster, 0)
            L.append(f"- {cfg} stop: {run.exits[cfg]}; containers labelled {LABEL_CLUSTER}={cluster} "
                     f"left: {left}{' (removed by bench.py)' if left else ''}")
    if "nmc-tls" in run.exits:
        L.append(f"- nmc-tls stop: {run.exits['nmc-tls']} (--keep: it leaves nmc's replicas)")
    L.append(f"- run took {took:.0f} s" + (f" (nmc answered after {t_ready['nmc']:.1f} s)"
                                           if "nmc" in t_ready else ""))
    for cfg, tail in tails.items():
        if tail:
            L.append(f"\n{cfg}'s last log lines:\n\n```\n{tail}\n```")
    return "\n".join(L) + "\n"
