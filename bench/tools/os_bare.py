#!/usr/bin/env python3
"""The bare limits for OpenSearch, with nothing but the standard library:

    os_bare.py read URL INDEX SLICES     # PIT + search_after sorted by _doc (as itbackup) in
                                         # SLICES parallel slices, 2,000 hits a
                                         # page; bodies discarded (to /dev/null)
    os_bare.py load URL DIR PARALLEL     # POST every DIR/bulk-*.ndjson to _bulk,
                                         # PARALLEL requests in flight

Neither parses the hits: `read` finds the last hit's sort value with a byte
search, `load` only checks the `errors` flag of each answer. Prints the number
of hits read or items loaded.
"""
import concurrent.futures
import glob
import http.client
import json
import os
import sys
import threading
import urllib.parse

PAGE = 2000
_local = threading.local()


def conn(url):
    c = getattr(_local, "conn", None)
    if c is None:
        u = urllib.parse.urlsplit(url)
        c = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=600)
        _local.conn = c
    return c


def request(url, method, path, body=None, ctype="application/json"):
    c = conn(url)
    headers = {"Content-Type": ctype} if body is not None else {}
    c.request(method, path, body=body, headers=headers)
    r = c.getresponse()
    data = r.read()
    if r.status >= 300:
        raise SystemExit(f"{method} {path}: HTTP {r.status}: {data[:300]!r}")
    return data


def read(url, index, slices):
    pit = json.loads(request(url, "POST", f"/{index}/_search/point_in_time?keep_alive=5m"))["pit_id"]

    def one_slice(sid):
        total = 0
        after = None
        while True:
            body = {"size": PAGE, "pit": {"id": pit, "keep_alive": "5m"}, "sort": [{"_doc": "asc"}],
                    "track_total_hits": False}
            if slices > 1:
                body["slice"] = {"id": sid, "max": slices}
            if after is not None:
                body["search_after"] = after
            data = request(url, "POST", "/_search", json.dumps(body))
            # The last hit's "sort":[N] without parsing the page.
            k = data.rfind(b'"sort":[')
            if k < 0:
                return total
            end = data.index(b"]", k)
            after = json.loads(data[k + 7:end + 1])
            total += data.count(b'"_id":')
            with open(os.devnull, "wb") as null:
                null.write(data)

    with concurrent.futures.ThreadPoolExecutor(slices) as ex:
        n = sum(ex.map(one_slice, range(slices)))
    request(url, "DELETE", "/_search/point_in_time", json.dumps({"pit_id": [pit]}))
    print(n)


def load(url, directory, parallel):
    files = sorted(glob.glob(os.path.join(directory, "bulk-*.ndjson")))

    def one(path):
        with open(path, "rb") as f:
            body = f.read()
        data = request(url, "POST", "/_bulk", body, "application/x-ndjson")
        if b'"errors":false' not in data[:200]:
            raise SystemExit(f"bulk {path}: item errors: {data[:500]!r}")
        return body.count(b"\n") // 2

    with concurrent.futures.ThreadPoolExecutor(parallel) as ex:
        n = sum(ex.map(one, files))
    print(n)


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "read":
        read(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    elif mode == "load":
        load(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        raise SystemExit(f"unknown mode {mode}")
