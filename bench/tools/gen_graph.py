#!/usr/bin/env python3
"""Write a deterministic graph as CSV for `neo4j-admin database import full`.

    gen_graph.py OUTDIR NODES RELS

nodes.csv: NODES nodes, 80 % :Person {uid, name, age, score, active},
20 % :Company {uid, name, founded, revenue}; rels.csv: RELS relationships,
:KNOWS {since, weight} between people and :WORKS_AT {role, since} from a person
to a company, endpoints drawn with a fixed seed.
"""
import os
import random
import sys


def main():
    out, nodes, rels = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    rnd = random.Random(42)
    os.makedirs(out, exist_ok=True)
    companies = max(1, nodes // 5)
    people = nodes - companies
    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel",
             "india", "juliet", "kilo", "lima", "mike", "november", "oscar", "papa"]
    with open(os.path.join(out, "people.csv"), "w") as f:
        f.write(":ID,uid:long,name,age:int,score:double,active:boolean\n")
        for i in range(people):
            f.write(f"{i},{i},{words[i % 16]}-{words[(i // 16) % 16]}-{i},{18 + i % 70},"
                    f"{rnd.random() * 100:.4f},{'true' if i % 3 else 'false'}\n")
    with open(os.path.join(out, "companies.csv"), "w") as f:
        f.write(":ID,uid:long,name,founded:int,revenue:double\n")
        for j in range(companies):
            i = people + j
            f.write(f"{i},{i},company {words[j % 16]} {j},{1900 + j % 120},{rnd.random() * 1e7:.2f}\n")
    roles = ["engineer", "manager", "analyst", "designer", "founder"]
    with open(os.path.join(out, "knows.csv"), "w") as fk, \
            open(os.path.join(out, "works_at.csv"), "w") as fw:
        fk.write(":START_ID,:END_ID,since:int,weight:double\n")
        fw.write(":START_ID,:END_ID,role,since:int\n")
        for r in range(rels):
            a = rnd.randrange(people)
            if r % 4 == 3:
                fw.write(f"{a},{people + rnd.randrange(companies)},{roles[r % 5]},{1990 + r % 35}\n")
            else:
                fk.write(f"{a},{rnd.randrange(people)},{2000 + r % 25},{rnd.random():.4f}\n")


if __name__ == "__main__":
    main()
