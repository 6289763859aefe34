"""RESULTS.md and its plots, from the results of one run (:mod:`benchmarks.run`)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

QUERY_TITLES = {
    "top": "get_books_top query (join + order_by + values)",
    "list20": "20 instances ordered by title",
    "get": "get(pk=...)",
    "select_related": "20 BookPublisher, select_related(publisher, book)",
    "count": "count()",
    "decorator": "decorator path: BookService.get_book_details",
    "decorator_nosf": "the same decorator without distributed singleflight",
}
LIB_ORDER = ["relaycache", "relaycache_near", "cacheops", "cachalot", "plain", "floor",
             "dict", "relaycache01"]
NEAR, OFF = "relaycache_near", "relaycache"
SHORT = {"relaycache": "rc", "relaycache_near": "rc near", "relaycache01": "rc 0.1"}
# targets of the near-cache issue (reported, not asserted)
NEAR_VS_DICT = 1.5  # near-cache hit at most this many times the dict floor
VS_RIVALS = {NEAR: 2.0, OFF: 1.3}  # rival's hit time over ours, at least
PAGE_CPU_SHARE = 0.5  # CPU of a cached page, at most this share of plain Django's
MISS_OVERHEAD = 1.3  # miss time over plain Django's, at most
PLOTS = {"latency": "bench_hit_latency.png", "invalidation": "bench_invalidation.png",
         "mixed": "bench_mixed.png"}


def us(ns: float | None) -> str:
    if ns is None:
        return "-"
    value = ns / 1e3
    return f"{value:,.0f}" if value >= 100 else f"{value:,.1f}"


def ms(ns: float | None) -> str:
    return "-" if ns is None else f"{ns / 1e6:,.2f}"


def ratio(a: float | None, b: float | None) -> str:
    if not a or not b:
        return "-"
    return f"{a / b:.2f}x"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join(" --- " if i == 0 else " ---: " for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("**met**" if ok else "**missed**")


def libs_of(results: dict[str, Any], section: str) -> list[str]:
    data = results.get(section) or {}
    if section in ("hits", "misses", "mixed"):
        present = {lib for per in data.values() for lib in per}
    else:
        present = set(data)
    return [lib for lib in LIB_ORDER if lib in present]


def med(per: dict[str, Any], lib: str) -> float | None:
    return (per.get(lib) or {}).get("median_ns")


def worst_ratio(hits: dict[str, Any], num: str, den: str, largest: bool
                ) -> tuple[str, float] | None:
    """The query where ``num / den`` is largest (or smallest), and the ratio."""
    values = {q: med(per, num) / med(per, den) for q, per in hits.items()
              if med(per, num) and med(per, den)}
    if not values:
        return None
    q = (max if largest else min)(values, key=values.__getitem__)
    return q, values[q]


# -- targets ---------------------------------------------------------------------------

def targets(results: dict[str, Any]) -> list[list[str]]:
    rows = []
    hits = results.get("hits", {})
    for ours in (NEAR, OFF):
        for rival in ("cacheops", "cachalot"):
            found = worst_ratio(hits, rival, ours, largest=False)
            if found:
                goal = VS_RIVALS[ours]
                rows.append([f"{ours} hits >= {goal}x faster than {rival} on every "
                             "workload-1 query",
                             f"worst: {found[0]}, {found[1]:.2f}x", verdict(found[1] >= goal)])
    found = worst_ratio(hits, NEAR, "dict", largest=True)
    if found:
        rows.append([f"{NEAR} hits within {NEAR_VS_DICT}x of the dict floor",
                     f"worst: {found[0]}, {found[1]:.2f}x", verdict(found[1] <= NEAR_VS_DICT)])
    found = worst_ratio(hits, OFF, "floor", largest=True)
    if found:
        rows.append(["relaycache hits within 1.25x of the Redis floor",
                     f"worst: {found[0]}, {found[1]:.2f}x", verdict(found[1] <= 1.25)])
    page = results.get("page_cpu") or {}
    plain_page = page_total(page.get("plain"))
    for ours in (OFF, NEAR):
        mine = page_total(page.get(ours))
        if mine is not None and plain_page:
            rows.append([f"{ours}: CPU per cached book page <= "
                         f"{PAGE_CPU_SHARE:.0%} of plain Django's (worker + PostgreSQL)",
                         f"{us(mine)} vs {us(plain_page)} µs ({mine / plain_page:.0%})",
                         verdict(mine / plain_page <= PAGE_CPU_SHARE)])
    misses = results.get("misses", {})
    for ours in (OFF, NEAR):
        found = worst_ratio(misses, ours, "plain", largest=True)
        if found:
            rows.append([f"{ours} miss within {MISS_OVERHEAD}x of plain Django on every "
                         "workload-1 query", f"worst: {found[0]}, {found[1]:.2f}x",
                         verdict(found[1] <= MISS_OVERHEAD)])
    inval = results.get("invalidation", {}).get("relaycache")
    if inval:
        first, last = inval[0], inval[-1]
        value = last["invalidate"]["median_ns"] / first["invalidate"]["median_ns"]
        rows.append([f"invalidation flat: {last['size']:,} within 1.5x of {first['size']:,} "
                     "entries",
                     f"{us(first['invalidate']['median_ns'])} -> "
                     f"{us(last['invalidate']['median_ns'])} us ({value:.2f}x)",
                     verdict(value <= 1.5)])
    stampede = results.get("stampede", {}).get("relaycache")
    if stampede:
        counts = [r["db_queries"] for r in stampede]
        rows.append(["exactly one DB query under the stampede",
                     f"{counts} per round ({stampede[0]['clients']} concurrent misses)",
                     verdict(all(c == 1 for c in counts))])
    rows += mixed_targets(results)
    stale = results.get("stale", {}).get("relaycache")
    if stale:
        rows.append(["zero stale reads for relaycache",
                     f"{stale['stale']} stale of {stale['reads']:,} reads",
                     verdict(stale["stale"] == 0)])
    return rows


# -- sections ----------------------------------------------------------------------------

def machine_section(results: dict[str, Any]) -> str:
    m = results["machine"]
    pk = m["packages"]
    rows = [["CPU", f"{m['cpu']}, {m['cores']} cores"], ["OS", m["platform"]],
            ["Python", m["python"]], ["Django", pk["Django"]],
            ["PostgreSQL server", m["postgresql"]], ["Redis server", m["redis_server"]],
            ["redis-py / hiredis", f"{pk['redis']} / {pk['hiredis']}"],
            ["psycopg", pk["psycopg"]], ["orjson", pk["orjson"]],
            ["relaycache", pk["relaycache"]], ["django-cacheops", pk["django-cacheops"]],
            ["django-cachalot", pk["django-cachalot"]],
            ["CPU idle states", m.get("cpu_idle", "not recorded")],
            ["load average (1, 5, 15 min) at start / end",
             f"{fmt_load(m['loadavg_start'])} / {fmt_load(m.get('loadavg_end'))}"]]
    d = results["data"]
    rows.append(["data", f"{d['books']:,} books, {d['genres']} genres, "
                         f"{d['publishers']} publishers, {d['book_publishers']:,} "
                         "book-publisher links"])
    return table(["", ""], rows)


def fmt_load(values: Any) -> str:
    return "-" if not values else ", ".join(f"{v:.2f}" for v in values)


def hits_section(results: dict[str, Any]) -> str:
    hits = results["hits"]
    libs = libs_of(results, "hits")
    rows = [[QUERY_TITLES[q]] + [us(med(per, lib)) for lib in libs] for q, per in hits.items()]
    out = [table(["query", *[f"{lib} µs" for lib in libs]], rows)]
    pairs = [(n, d) for n, d in [
        ("cacheops", OFF), ("cachalot", OFF), (OFF, "floor"), ("plain", OFF),
        ("cacheops", NEAR), ("cachalot", NEAR), (NEAR, "dict"), (NEAR, "floor"),
        (OFF, NEAR), ("floor", "dict")] if n in libs and d in libs]
    if pairs:
        rows = [[q] + [ratio(med(per, n), med(per, d)) for n, d in pairs]
                for q, per in hits.items()]
        out.append("\nRatios of those medians (same run). `x / relaycache` above 1: "
                   "relaycache is faster; `relaycache / floor` and `relaycache_near / dict`: "
                   "how far above the floor:\n")
        out.append(table(["query", *[f"{n} / {d}" for n, d in pairs]], rows))
    checks = []
    plain_fp = {q: per.get("plain", {}).get("fingerprint") for q, per in hits.items()}
    for lib in libs:
        ran = [(q, per[lib]) for q, per in hits.items() if lib in per]
        same = all(e["fingerprint"] == plain_fp[q] for q, e in ran)
        dbq = sum(e["db_selects"] for _, e in ran)
        samples = sum(e["samples"] for _, e in ran)
        checks.append([lib, "yes" if same else "**no**", f"{dbq:,}", f"{samples:,}"])
    out.append("\nEvery library returned the same results as plain Django, and the cached "
               "ones did it without touching the database while sampled:\n")
    out.append(table(["library", "results equal plain Django's", "SELECTs while sampling",
                      "samples"], checks))
    spread = []
    for q, per in hits.items():
        spread.append([q] + [f"{us(per[lib]['min_round_ns'])}-{us(per[lib]['max_round_ns'])}"
                             if lib in per else "-" for lib in libs])
    out.append("\nSpread of the per-round medians (µs, min-max over rounds):\n")
    out.append(table(["query", *libs], spread))
    return "\n".join(out)


def cpu_cell(entry: dict[str, Any] | None, with_pg: bool) -> str:
    if not entry or entry.get("cpu_ns") is None:
        return "-"
    cell = us(entry["cpu_ns"])
    if with_pg and entry.get("pg_cpu_ns") is not None:
        cell += f" + {us(entry['pg_cpu_ns'])}"
    return cell


def cpu_section(results: dict[str, Any]) -> str:
    hits = results["hits"]
    libs = [lib for lib in libs_of(results, "hits")
            if any((per.get(lib) or {}).get("cpu_ns") is not None for per in hits.values())]
    if not libs:
        return "Not recorded in this run."
    rows = [[q] + [cpu_cell(per.get(lib), lib == "plain") for lib in libs]
            for q, per in hits.items()]
    return table(["query", *[f"{lib} CPU µs" for lib in libs]], rows)


def page_total(entry: dict[str, Any] | None) -> float | None:
    if not entry:
        return None
    return entry["cpu_ns"] + (entry.get("pg_cpu_ns") or 0)


def page_cpu_section(results: dict[str, Any]) -> str:
    page = results["page_cpu"]
    plain = page_total(page.get("plain"))
    rows = []
    for lib in [lib for lib in LIB_ORDER if lib in page]:
        e = page[lib]
        total = page_total(e)
        rows.append([lib, f"{e['pages']:,}", us(e["wall_ns"]), us(e["cpu_ns"]),
                     us(e["pg_cpu_ns"]), us(total),
                     f"{total / plain:.0%}" if plain and total is not None else "-",
                     f"{e['db_selects']:,}"])
    return table(["library", "pages", "wall µs per page", "worker CPU µs",
                  "PostgreSQL CPU µs", "total CPU µs", "of plain's", "SELECTs"], rows)


def decorator_section(results: dict[str, Any]) -> str:
    hits = results["hits"]
    sf, nosf = hits.get("decorator", {}), hits.get("decorator_nosf", {})
    floor = {"decorator": med(sf, "relaycache01"), "decorator_nosf": med(nosf, "relaycache01")}
    rows = []
    for lib in (OFF, NEAR, "relaycache01"):
        cells = []
        for q, per in (("decorator", sf), ("decorator_nosf", nosf)):
            cells += [us(med(per, lib)), ratio(med(per, lib), floor[q])]
        if any(c != "-" for c in cells[::2]):
            rows.append([lib, *cells])
    return table(["library", "with distributed singleflight µs", "vs 0.1",
                  "without µs", "vs 0.1"], rows)


def misses_section(results: dict[str, Any]) -> str:
    misses = results["misses"]
    libs = libs_of(results, "misses")
    rows = []
    for q, per in misses.items():
        plain = per.get("plain", {}).get("median_ns")
        row = [QUERY_TITLES[q]] + [ms(med(per, lib)) for lib in libs]
        for lib in libs:
            if lib != "plain" and plain:
                row.append(f"{(per[lib]['median_ns'] - plain) / 1e3:+,.0f} µs "
                           f"({per[lib]['median_ns'] / plain:.2f}x)")
        rows.append(row)
    header = ["query", *[f"{lib} ms" for lib in libs],
              *[f"{lib} overhead vs plain" for lib in libs if lib != "plain"]]
    out = [table(header, rows)]
    ours = [lib for lib in (OFF, NEAR) if lib in libs]
    if ours and "plain" in libs:
        rows = []
        for q, per in misses.items():
            plain = per["plain"]
            row = [q, us(plain["median_ns"])]
            for lib in ours:
                value = per[lib]["median_ns"] / plain["median_ns"]
                row += [us(per[lib]["median_ns"]),
                        f"{value:.2f}x" + ("" if value <= MISS_OVERHEAD else " **over**")]
            rows.append(row)
        out.append(f"\nMiss overhead of relaycache, near cache off and on (target: at most "
                   f"{MISS_OVERHEAD}x plain Django's time):\n")
        out.append(table(["query", "plain µs",
                          *[c for lib in ours for c in (f"{lib} µs", f"{lib} / plain")]],
                         rows))
    if any(e.get("cpu_ns") is not None for per in misses.values() for e in per.values()):
        rows = [[q] + [cpu_cell(per.get(lib), True) for lib in libs]
                for q, per in misses.items()]
        out.append("\nCPU per miss, µs: the worker's + its PostgreSQL backend's:\n")
        out.append(table(["query", *libs], rows))
    return "\n".join(out)


def invalidation_section(results: dict[str, Any]) -> str:
    inval = results["invalidation"]
    libs = [lib for lib in LIB_ORDER if lib in inval]
    sizes = [r["size"] for r in inval[libs[0]]]
    rows = []
    for i, size in enumerate(sizes):
        row = [f"{size:,}"]
        for lib in libs:
            r = inval[lib][i]
            row.append(us(r["invalidate"]["median_ns"]))
        for lib in libs:
            r = inval[lib][i]
            row.append(us(r["save"]["median_ns"]))
        rows.append(row)
    ratio_row = ["ratio largest / smallest"]
    for kind in ("invalidate", "save"):
        for lib in libs:
            ratio_row.append(ratio(inval[lib][-1][kind]["median_ns"],
                                   inval[lib][0][kind]["median_ns"]))
    rows.append(ratio_row)
    header = ["entries", *[f"{lib} invalidate µs" for lib in libs],
              *[f"{lib} save() µs" for lib in libs]]
    out = [table(header, rows)]
    detail = []
    for lib in libs:
        for r in inval[lib]:
            c = r["checks"]
            detail.append([lib, f"{r['size']:,}", f"{r['api_entries']:,}",
                           f"{r['cloned_entries']:,}", f"{r['fill_api_s']:.1f}",
                           f"{r['fill_clone_s']:.1f}", str(r["repeats"]),
                           f"{c.get('valid_before', 0)}/{c['samples']}",
                           f"{c.get('invalid_after', 0)}/{c['samples']}",
                           "yes" if c.get("api_hit_before") and c.get("api_miss_after")
                           else "**no**"])
    out.append("\nHow the entries were made, and checks that each timed invalidation really "
               "had them all valid before and invalid after:\n")
    out.append(table(["library", "entries", "through the API", "written directly",
                      "API fill s", "direct fill s", "repeats", "probe valid before",
                      "probe invalid after", "real entry hit before / miss after"], detail))
    return "\n".join(out)


MIXED_QUERIES = ["get", "publishers", "genres", "count", "listing"]
# issue 11's targets for relaycache in workload 4: hit ratio per write share, and more
MIXED_HIT_TARGETS = {"0.01": 0.85, "0.1": 0.65}
SAVE_TARGET = 1.2


def is_page_load(results: dict[str, Any]) -> bool:
    """Whether workload 4's results are the page load's (not an older run's)."""
    mixed = results.get("mixed") or {}
    return bool(mixed) and all("per_query" in r for per in mixed.values()
                               for r in per.values())


def mixed_targets(results: dict[str, Any]) -> list[list[str]]:
    rows = []
    if not is_page_load(results):
        return rows
    for key, per in results["mixed"].items():
        rc = per.get("relaycache")
        if rc is None:
            continue
        share = f"{float(key):.0%} writes"
        goal = MIXED_HIT_TARGETS.get(key)
        if goal is not None:
            rows.append([f"{share}: hit ratio >= {goal:.0%}", f"{rc['hit_ratio']:.1%}",
                         verdict(rc["hit_ratio"] >= goal)])
        for rival in ("plain", "cacheops"):
            if rival in per:
                value = rc["ops_per_s"] / per[rival]["ops_per_s"]
                rows.append([f"{share}: throughput above {rival}",
                             f"{rc['ops_per_s']:,.0f} vs {per[rival]['ops_per_s']:,.0f} ops/s "
                             f"({value:.2f}x)", verdict(value > 1)])
        near = per.get(NEAR)
        if near is not None:
            rows.append([f"{share}: throughput, near cache on vs off",
                         f"{near['ops_per_s']:,.0f} vs {rc['ops_per_s']:,.0f} ops/s "
                         f"({near['ops_per_s'] / rc['ops_per_s']:.2f}x)",
                         verdict(near["ops_per_s"] > rc["ops_per_s"])])
            rows.append([f"{share}: 0 stale reads with the near cache",
                         f"{near['stale']} of {near['stale_checked']:,} checked requests",
                         verdict(near["stale"] == 0)])
        rows.append([f"{share}: 0 stale reads",
                     f"{rc['stale']} of {rc['stale_checked']:,} checked requests",
                     verdict(rc["stale"] == 0)])
        if rc.get("save_vs_plain") is not None:
            rows.append([f"{share}: save() p50 within {SAVE_TARGET}x of plain Django",
                         f"{us(rc['write_p50_ns']['save'])} vs "
                         f"{us(per['plain']['write_p50_ns']['save'])} µs "
                         f"({rc['save_vs_plain']:.2f}x)",
                         verdict(rc["save_vs_plain"] <= SAVE_TARGET)])
    return rows


def warm_ratio(r: dict[str, Any]) -> float:
    """Hits among the queries that were not cold misses (a cold miss is no
    invalidation's doing)."""
    warm = r["queries"] - r["cold_misses"]
    hits = sum(q["hits"] for q in r["per_query"].values())
    return hits / warm if warm > 0 else 0.0


def mixed_intro(cfg: dict[str, Any]) -> str:
    return (
        f"{cfg['pool']} processes per library for {cfg['mixed_seconds']} s "
        f"(after {cfg['mixed_warmup']} s warm-up) x {cfg['mixed_rounds']} rounds, from a "
        f"cache warmed with the pages of the {cfg['mixed_prefill']:,} most "
        "popular books and every listing page. A request is a Zipf-chosen (s=1.1) "
        "book page: `get(pk)`, its `BookPublisher` rows with "
        "`select_related('publisher')`, its genres (`Genre` through `BookGenre`, "
        "`values()`); one request in five also opens one of its genres: `count()` of "
        "the genre's books and a page of 20 of them (page p with probability 2^-p). "
        "With the given probability a request instead writes the book, in turn "
        "`save(update_fields=['title'])`, `filter(pk=...).update(title=...)` "
        "(cacheops: `invalidated_update`) or adding/removing one `BookGenre` row. Hit "
        "ratio = queries that ran no SELECT; ops/s excludes the harness' bookkeeping; "
        "a stale read returned a title older, or a genre set other, than the last one "
        "written before the request started (see docs/benchmarks.md).")


def mixed_section(results: dict[str, Any]) -> str:
    mixed = results["mixed"]
    if not is_page_load(results):
        return ("These results come from an older workload 4 (page reads and title saves "
                "only); run the benchmark again for the page load.")
    rows = []
    for ratio_key, per in mixed.items():
        for lib in [lib for lib in LIB_ORDER if lib in per]:
            r = per[lib]
            w = r["write_p50_ns"]
            rows.append([f"{float(ratio_key):.0%}", lib, f"{r['ops_per_s']:,.0f}",
                         ratio(r["ops_per_s"], per.get("plain", {}).get("ops_per_s")),
                         f"{r['hit_ratio']:.1%}",
                         f"{r['cold_misses'] / r['queries']:.1%}"
                         if r["queries"] and lib != "plain" else "-",
                         f"{warm_ratio(r):.1%}",
                         us(r["read_p50_ns"]), us(r["read_p99_ns"]), us(w["save"]),
                         f"{r['save_vs_plain']:.2f}x" if r.get("save_vs_plain") else "-",
                         us(w["update"]), us(w["bookgenre"]),
                         f"**{r['stale']}** / {r['stale_checked']:,}",
                         f"{r['reads']:,}", f"{sum(r['writes'].values()):,}",
                         str(r["errors"])])
    out = [table(["writes", "library", "ops/s", "vs plain", "hit ratio", "cold misses",
                  "hit ratio without cold misses",
                  "read p50 µs", "read p99 µs", "save() p50 µs", "save() vs plain",
                  "update() p50 µs", "BookGenre add/remove p50 µs", "stale / checked",
                  "page requests", "writes", "errors"], rows)]
    per_query = []
    for ratio_key, per in mixed.items():
        for lib in [lib for lib in LIB_ORDER if lib in per and lib != "plain"]:
            q = per[lib]["per_query"]
            per_query.append([f"{float(ratio_key):.0%}", lib] + [
                f"{q[k]['hits'] / q[k]['queries']:.1%} ({q[k]['cold_misses']:,} cold)"
                if q.get(k, {}).get("queries") else "-" for k in MIXED_QUERIES])
    out.append("\nHit ratio per query of the page (in brackets: cold misses, of queries "
               "that neither the prefill nor this process had read before in the run, "
               "so no invalidation's doing):\n")
    out.append(table(["writes", "library", *MIXED_QUERIES], per_query))
    stale = [[f"{float(k):.0%}", lib, ", ".join(f"{q} {n}" for q, n in
                                                 sorted(r["stale_by_query"].items())),
              "; ".join(f"{e['kind']} of book {e['book']}" for e in r["stale_examples"])]
             for k, per in mixed.items() for lib, r in per.items() if r["stale"]]
    if stale:
        out.append("\nStale reads by query:\n")
        out.append(table(["writes", "library", "stale by query", "examples"], stale))
    errors = [f"- {lib} at {float(k):.0%} writes: {r['error']}" for k, per in mixed.items()
              for lib, r in per.items() if r["errors"]]
    if errors:
        out.append("\nErrors (first of each library):\n")
        out += errors
    goals = mixed_targets(results)
    if goals:
        out.append("\nIssue 11's targets for relaycache (reported, not asserted):\n")
        out.append(table(["target", "measured", ""], goals))
    return "\n".join(out)


def stampede_section(results: dict[str, Any]) -> str:
    rows = []
    for lib in [lib for lib in LIB_ORDER if lib in results["stampede"]]:
        runs = results["stampede"][lib]
        rows.append([lib, ", ".join(str(r["db_queries"]) for r in runs),
                     f"{runs[0]['clients']} in {runs[0]['processes']} processes",
                     ", ".join(str(r["distinct_results"]) for r in runs),
                     ms(max(r["max_latency_ns"] or 0 for r in runs)),
                     "; ".join(e.strip().splitlines()[-1] for r in runs for e in r["errors"])
                     or "none"])
    return table(["library", "DB queries per round", "concurrent misses",
                  "distinct results", "slowest client ms", "errors"], rows)


def stale_section(results: dict[str, Any]) -> str:
    rows = []
    for lib in [lib for lib in LIB_ORDER if lib in results["stale"]]:
        r = results["stale"][lib]
        rows.append([lib, f"{r['reads']:,}", f"{r['writes']:,}", f"**{r['stale']:,}**",
                     f"{r['stale'] / r['reads']:.2%}" if r["reads"] else "-",
                     f"{r['hit_ratio']:.1%}",
                     ", ".join(f"{k} {v}" for k, v in sorted(r["stale_shapes"].items()))
                     or "-"])
    out = [table(["library", "reads", "writes", "stale reads", "stale share",
                  "reads served from cache", "stale by shape"], rows)]
    examples = [(lib, e) for lib, r in results["stale"].items() for e in r["examples"][:1]]
    if examples:
        out.append("\nExamples (row, version seen, version whose write had returned before "
                   "the read started):\n")
        out += [f"- {lib}: `{e['shape']}` row {e['row']} saw v{e['seen']}, "
                f"v{e['returned_before']} had returned" for lib, e in examples]
    return "\n".join(out)


def memory_section(results: dict[str, Any]) -> str:
    em = results["entry_memory"]
    rows = []
    for lib in [lib for lib in LIB_ORDER if lib in em]:
        for shape, r in em[lib].items():
            kinds = ", ".join(f"{k}: {v['keys']:,} keys / {v['bytes']:,} B"
                              for k, v in r["kinds"].items())
            rows.append([lib, shape, f"{r['entries']:,}", f"{r['keys']:,}",
                         f"{r['bytes_per_entry']:,.0f}", kinds])
    out = [table(["library", "entry", "entries", "Redis keys", "bytes per entry",
                  "keys by kind"], rows)]
    growth = results.get("growth", {})
    if growth:
        rows = []
        for lib in [lib for lib in LIB_ORDER if lib in growth]:
            for p in growth[lib]:
                kinds = ", ".join(f"{k}: {v['keys']:,}" for k, v in p["kinds"].items())
                rows.append([lib, f"{p['writes']:,}", f"{p['keys']:,}", f"{p['bytes']:,}",
                             kinds])
        out.append(f"\nKeys and bytes under each library's prefix while "
                   f"{growth[next(iter(growth))][-1]['writes']:,} single-row writes run "
                   "(Zipf-chosen books, with page reads between them):\n")
        out.append(table(["library", "writes", "keys", "bytes", "keys by kind"], rows))
    return "\n".join(out)


# -- plots -------------------------------------------------------------------------------

def plots(results: dict[str, Any], out_dir: Path) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    made = []
    colors = {"relaycache": "#d62728", "relaycache_near": "#ff9896", "cacheops": "#1f77b4",
              "cachalot": "#2ca02c", "plain": "#7f7f7f", "floor": "#000000",
              "dict": "#9467bd", "relaycache01": "#8c564b"}
    hits = results.get("hits")
    if hits:
        libs = libs_of(results, "hits")
        fig, ax = plt.subplots(figsize=(10, 4.8))
        width = 0.8 / len(libs)
        for i, lib in enumerate(libs):
            xs = [j + i * width for j in range(len(hits))]
            ax.bar(xs, [(med(hits[q], lib) or 0) / 1e3 for q in hits], width, label=lib,
                   color=colors[lib])
        ax.set_xticks([j + width * (len(libs) - 1) / 2 for j in range(len(hits))])
        ax.set_xticklabels(list(hits))
        ax.set_yscale("log")
        ax.set_ylabel("median latency, µs (log)")
        ax.set_title("Workload 1: hit latency per query (plain = no cache)")
        ax.legend(ncol=min(len(libs), 4), loc="upper center", bbox_to_anchor=(0.5, -0.08),
                  frameon=False, fontsize=8)
        ax.grid(axis="y", which="both", alpha=0.3)
        fig.tight_layout()
        fig.savefig(out_dir / PLOTS["latency"], dpi=110)
        plt.close(fig)
        made.append(PLOTS["latency"])
    inval = results.get("invalidation")
    if inval:
        fig, ax = plt.subplots(figsize=(8, 4.8))
        for lib in [lib for lib in LIB_ORDER if lib in inval]:
            sizes = [r["size"] for r in inval[lib]]
            ax.plot(sizes, [r["invalidate"]["median_ns"] / 1e3 for r in inval[lib]], "o-",
                    color=colors[lib], label=f"{lib}: invalidation")
            ax.plot(sizes, [r["save"]["median_ns"] / 1e3 for r in inval[lib]], "s--",
                    color=colors[lib], alpha=0.6, label=f"{lib}: save()")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("cached entries under the table")
        ax.set_ylabel("median time, µs (log)")
        ax.set_title("Workload 3: invalidation cost versus cached entries")
        ax.legend(fontsize=8)
        ax.grid(which="both", alpha=0.3)
        fig.tight_layout()
        fig.savefig(out_dir / PLOTS["invalidation"], dpi=110)
        plt.close(fig)
        made.append(PLOTS["invalidation"])
    mixed = results.get("mixed")
    if mixed:
        ratios = list(mixed)
        libs = [lib for lib in LIB_ORDER if lib in mixed[ratios[0]]]
        fig, ax = plt.subplots(figsize=(8, 4.5))
        width = 0.8 / len(libs)
        for i, lib in enumerate(libs):
            xs = [j + i * width for j in range(len(ratios))]
            ax.bar(xs, [mixed[r][lib]["ops_per_s"] for r in ratios], width, label=lib,
                   color=colors[lib])
        ax.set_xticks([j + width * (len(libs) - 1) / 2 for j in range(len(ratios))])
        ax.set_xticklabels([f"{float(r):.0%} writes" for r in ratios])
        ax.set_ylabel("operations per second")
        ax.set_title("Workload 4: page load throughput")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out_dir / PLOTS["mixed"], dpi=110)
        plt.close(fig)
        made.append(PLOTS["mixed"])
    return made


# -- the document ------------------------------------------------------------------------

def render(results: dict[str, Any], images: list[str]) -> str:
    cfg = results["config"]
    smoke = results.get("smoke")
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        "# Benchmark results" + (" (SMOKE RUN: tiny data, not representative)" if smoke
                                  else ""),
        "",
        f"Generated by `.venv/bin/python -m benchmarks.run{' --smoke' if smoke else ''}` on "
        f"{when}, in {results.get('seconds', 0):.0f} s. How each number is measured: "
        "[docs/benchmarks.md](../docs/benchmarks.md). All ratios compare numbers of this "
        "one run; every library ran in processes of its own, interleaved round by round.",
        "",
        "## Machine",
        "",
        machine_section(results),
        "",
        "Other work may share this machine (the load averages above say how much); "
        "medians over interleaved rounds keep the comparisons fair, not the absolute "
        "numbers.",
        "",
        "## Targets (reported, not asserted)",
        "",
        table(["target", "measured", ""], targets(results)),
        "",
    ]
    for note in results.get("notes", []):
        parts += [f"> {note}", ""]
    if "hits" in results:
        parts += [
            "## 1. Hit latency",
            "",
            f"Median latency of one call served from the cache, in µs: median over "
            f"{cfg['rounds']} interleaved rounds of each round's median (up to "
            f"{cfg['hit_n']} samples after {cfg['hit_warmup']} warm-up calls). `plain` is "
            "Django without a cache (every call queries PostgreSQL); `floor` is one raw "
            "Redis `GET` of an orjson payload plus `Model.from_db` (the least any Redis "
            "cache can do); `dict` is the same payload looked up in a dict of the process "
            "(no round trip), then decoded and rebuilt the same way (the least an "
            "in-process cache that hands out values of their own can do). `relaycache` "
            "runs with `near_cache=False`, `relaycache_near` with `near_cache=True`; "
            "`relaycache01` is relaycache 0.1.1's `@cache` (decorator queries only).",
            "",
            hits_section(results),
            "",
        ]
        if PLOTS["latency"] in images:
            parts += [f"![hit latency]({PLOTS['latency']})", ""]
        if "decorator_nosf" in results["hits"]:
            parts += [
                "### The decorator against relaycache 0.1",
                "",
                "`BookService.get_book_details` hit, with the sample's "
                "`distributed_singleflight=True` and without it, against relaycache "
                "0.1.1's `@cache` on its `RedisCache` (with and without its "
                "`distributed_singleflight` Redis lock) around the same function. 0.1 "
                "does one `GET` and `pickle.loads`; it checks no tag stamps, so it never "
                "learns of writes it was not told about.",
                "",
                decorator_section(results),
                "",
            ]
        parts += [
            "### CPU per hit",
            "",
            "CPU time of the worker process per call (`time.process_time`, all threads) "
            "over the sampled calls of every round; for plain Django, `+` the CPU of its "
            "PostgreSQL backend (`/proc/<pg_backend_pid>/schedstat`, the same machine). "
            "Redis server CPU is not counted.",
            "",
            cpu_section(results),
            "",
        ]
        if results.get("page_cpu"):
            parts += [
                "### CPU per fully cached book page",
                "",
                "Workload 4's book page (`get(pk)`, publishers with `select_related`, "
                "genres `values()`), every query a hit for the caches, over "
                f"{cfg.get('page_cpu_books', '?')} books read in turn after two warming "
                f"passes, {cfg.get('page_cpu_rounds', '?')} interleaved rounds: worker CPU "
                "plus its PostgreSQL backend's, per page (Redis server CPU not counted).",
                "",
                page_cpu_section(results),
                "",
            ]
    if "misses" in results:
        parts += [
            "## 2. Miss cost",
            "",
            "Median latency of a cold read right after the library invalidated the query's "
            "tables (its own invalidation call, untimed), in ms, and the overhead over "
            "plain Django running the same query.",
            "",
            misses_section(results),
            "",
        ]
    if "invalidation" in results:
        parts += [
            "## 3. Invalidation cost versus cached entries",
            "",
            "Median time of the invalidation a write to `books_book` triggers (relaycache: "
            "`invalidate_tables`, what its execute_wrapper calls; cacheops: "
            "`invalidate_obj`, what its post_save handler calls; cachalot: "
            "`cachalot.api.invalidate`, what its write compiler calls), and of a whole "
            "`Book.save(update_fields=['title'])`, with N valid entries under the table.",
            "",
            invalidation_section(results),
            "",
        ]
        if PLOTS["invalidation"] in images:
            parts += [f"![invalidation cost]({PLOTS['invalidation']})", ""]
    if "mixed" in results:
        parts += [
            "## 4. Page load (mixed reads and writes)",
            "",
            mixed_intro(cfg) if is_page_load(results) else "",
            "",
            mixed_section(results),
            "",
        ]
        if PLOTS["mixed"] in images:
            parts += [f"![mixed load]({PLOTS['mixed']})", ""]
    if "stampede" in results:
        parts += [
            "## 5. Stampede",
            "",
            "Concurrent misses of one query, released together while the harness holds "
            f"`ACCESS EXCLUSIVE` on `books_book` for {cfg['stampede_hold_s']} s (so the "
            "query is equally slow for every library). relaycache uses "
            "`.cached(singleflight=True)`, cacheops `.cache(lock=True)` (its dog-pile "
            "lock); cachalot has no such option. DB queries = SELECTs counted by an "
            "`execute_wrapper` in every process.",
            "",
            stampede_section(results),
            "",
        ]
    if "stale" in results:
        parts += [
            "## 6. Stale reads under load",
            "",
            f"1 writer and {cfg['pool'] - 1} reader processes per library for "
            f"{cfg['stale_seconds']} s on {cfg['stale_rows']} fresh rows. The writer bumps a "
            "row's version with `save()`, `QuerySet.update()` (cacheops: its "
            "`invalidated_update()`, as its docs require) or both in one `atomic` block, "
            "and records the version once the call has returned. A read is stale when it "
            "shows a version older than one recorded before the read started.",
            "",
            stale_section(results),
            "",
        ]
    if "entry_memory" in results:
        parts += [
            "## 7. Memory",
            "",
            "Redis bytes (`MEMORY USAGE`, exact) under each library's prefix divided by the "
            "number of distinct cached queries, stamps, conj sets and table keys included.",
            "",
            memory_section(results),
            "",
        ]
    return "\n".join(parts).rstrip() + "\n"


def write(results: dict[str, Any], out_dir: Path) -> str:
    out_dir.mkdir(parents=True, exist_ok=True)
    images = plots(results, out_dir)
    text = render(results, images)
    (out_dir / "RESULTS.md").write_text(text)
    return text
