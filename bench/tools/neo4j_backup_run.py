#!/usr/bin/env python3
"""Run the PyPI `neo4j-backup` tool (a library: Extractor / Importer, no CLI).

    neo4j_backup_run.py export DIR     # Extractor(...).extract_data() into DIR
    neo4j_backup_run.py import DIR     # Importer(...).import_data() from DIR

Connection from NEO4J_URI, NEO4J_USER, NEO4J_PASSWORD. Both run with the
tool's defaults (gzip-compressed JSON files of ~8k rows each), input_yes=True.
"""
import os
import sys
import warnings

warnings.filterwarnings("ignore")  # Node.id deprecation warnings of the driver

from neo4j import GraphDatabase
from neo4j_backup import Extractor, Importer


def main():
    mode, project_dir = sys.argv[1], sys.argv[2]
    driver = GraphDatabase.driver(
        os.environ["NEO4J_URI"],
        auth=(os.environ.get("NEO4J_USER", "neo4j"), os.environ["NEO4J_PASSWORD"]),
    )
    try:
        if mode == "export":
            Extractor(project_dir=project_dir, driver=driver, database="neo4j",
                      input_yes=True, compress=True).extract_data()
        elif mode == "import":
            Importer(project_dir=project_dir, driver=driver, database="neo4j",
                     input_yes=True).import_data()
        else:
            sys.exit(f"unknown mode {mode}")
    finally:
        driver.close()


if __name__ == "__main__":
    main()
