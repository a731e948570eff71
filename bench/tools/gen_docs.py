#!/usr/bin/env python3
"""Write N deterministic documents of about 1 KB as `_bulk` NDJSON, split in
files of BATCH documents (bulk-00000.ndjson, ...), for one index.

    gen_docs.py OUTDIR INDEX N [BATCH]
"""
import json
import os
import random
import sys

WORDS = ("lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor "
         "incididunt ut labore et dolore magna aliqua enim ad minim veniam quis nostrud "
         "exercitation ullamco laboris nisi aliquip ex ea commodo consequat duis aute irure "
         "in reprehenderit voluptate velit esse cillum fugiat nulla pariatur excepteur sint "
         "occaecat cupidatat non proident sunt culpa qui officia deserunt mollit anim id est "
         "laborum").split()


def main():
    out, index, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    batch = int(sys.argv[4]) if len(sys.argv) > 4 else 5000
    os.makedirs(out, exist_ok=True)
    rnd = random.Random(7)
    # A pool of sentences, so generation is quick yet documents differ.
    pool = [" ".join(rnd.choice(WORDS) for _ in range(rnd.randint(8, 20))) for _ in range(4096)]
    action_fmt = '{"index":{"_index":"%s","_id":"%%d"}}\n' % index
    f = None
    for i in range(n):
        if i % batch == 0:
            if f:
                f.close()
            f = open(os.path.join(out, "bulk-%05d.ndjson" % (i // batch)), "w")
        body = " ".join(pool[(i * 7 + k * 131) % 4096] for k in range(7))
        doc = {
            "id": i,
            "title": pool[i % 4096][:60],
            "body": body[:760],
            "tags": [WORDS[i % 60], WORDS[(i // 60) % 60], WORDS[(i * 13) % 60]],
            "price": round((i * 7919 % 100000) / 100, 2),
            "quantity": i % 1000,
            "active": i % 3 != 0,
            "created": "2024-%02d-%02dT%02d:%02d:%02dZ" % (1 + i % 12, 1 + i % 28, i % 24, i % 60, (i * 7) % 60),
            "location": {"lat": round(-90 + (i % 18000) / 100, 2), "lon": round(-180 + (i % 36000) / 100, 2)},
            "owner": {"name": "user%d" % (i % 5000), "group": "group%d" % (i % 50)},
        }
        f.write(action_fmt % i)
        f.write(json.dumps(doc, separators=(",", ":")))
        f.write("\n")
    if f:
        f.close()


if __name__ == "__main__":
    main()
