#!/usr/bin/env python3
"""Diagnostic for a running itbackup Neo4j backup or restore: once a second,
record the queries the server is running (SHOW TRANSACTIONS) and the RSS of the
process PID, then print per query kind when it was first and last seen, and the
RSS peak with the query running at that moment.

    neo4j_phases.py PID     # runs until PID exits

Connection from NEO4J_URI, NEO4J_USER, NEO4J_PASSWORD (neo4j driver).
"""
import os
import re
import sys
import time

from neo4j import GraphDatabase


def rss_kb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return 0


def main():
    pid = int(sys.argv[1])
    driver = GraphDatabase.driver(os.environ["NEO4J_URI"],
                                  auth=(os.environ.get("NEO4J_USER", "neo4j"), os.environ["NEO4J_PASSWORD"]))
    t0 = time.time()
    seen = {}
    peak = (0, 0.0, "")
    with driver.session(database="neo4j") as s:
        while True:
            rss = rss_kb(pid)
            if rss is None:
                break
            now = time.time() - t0
            kinds = []
            try:
                for rec in s.run("SHOW TRANSACTIONS YIELD currentQuery RETURN currentQuery"):
                    q = re.sub(r"\s+", " ", rec[0] or "").strip()
                    if not q or q.startswith("SHOW TRANSACTIONS"):
                        continue
                    kind = q[:90]
                    kinds.append(kind)
                    first, _ = seen.get(kind, (now, now))
                    seen[kind] = (first, now)
            except Exception as e:  # server restarting, say
                kinds.append(f"({type(e).__name__})")
            if rss > peak[0]:
                peak = (rss, now, "; ".join(sorted(set(kinds)))[:200])
            time.sleep(1)
    driver.close()
    for kind, (first, last) in sorted(seen.items(), key=lambda kv: kv[1][0]):
        print(f"{first:7.1f}s .. {last:7.1f}s  {kind}")
    print(f"peak RSS {peak[0] / 1024:.0f} MB at {peak[1]:.1f}s while: {peak[2] or '(no query)'}")


if __name__ == "__main__":
    main()
