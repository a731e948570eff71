#!/usr/bin/env python3
"""Run Cypher statements in auto-commit transactions over Bolt (so that
CALL { } IN TRANSACTIONS works); print the first column of each result row.

    cypher.py 'STATEMENT' ['STATEMENT' ...]
    cypher.py --wipe     # drop constraints and indexes (not LOOKUP), delete everything

Connection from NEO4J_URI, NEO4J_USER, NEO4J_PASSWORD.
"""
import os
import sys

from neo4j import GraphDatabase


def main():
    driver = GraphDatabase.driver(
        os.environ["NEO4J_URI"],
        auth=(os.environ.get("NEO4J_USER", "neo4j"), os.environ["NEO4J_PASSWORD"]),
    )
    with driver.session(database="neo4j") as s:
        if sys.argv[1:] == ["--wipe"]:
            for rec in s.run("SHOW CONSTRAINTS YIELD name RETURN name").data():
                s.run(f"DROP CONSTRAINT `{rec['name']}` IF EXISTS").consume()
            for rec in s.run("SHOW INDEXES YIELD name, type WHERE type <> 'LOOKUP' RETURN name").data():
                s.run(f"DROP INDEX `{rec['name']}` IF EXISTS").consume()
            s.run("MATCH ()-[r]->() CALL (r) { DELETE r } IN TRANSACTIONS OF 50000 ROWS").consume()
            s.run("MATCH (n) CALL (n) { DETACH DELETE n } IN TRANSACTIONS OF 50000 ROWS").consume()
        else:
            for stmt in sys.argv[1:]:
                for rec in s.run(stmt):
                    print(rec[0])
    driver.close()


if __name__ == "__main__":
    main()
