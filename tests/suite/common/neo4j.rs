//! A blocking client of the testenv Neo4j over Bolt, so tests stay plain
//! functions that can hold their server locks.
use neo4rs::{query, Graph, Query, Row};

pub struct Neo {
    pub rt: tokio::runtime::Runtime,
    pub graph: Graph,
}

impl Neo {
    pub fn connect() -> Neo {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let graph = rt
            .block_on(Graph::new(
                super::required_env("NEO4J_URI"),
                super::required_env("NEO4J_USER"),
                super::required_env("NEO4J_PASSWORD"),
            ))
            .expect("the testenv Neo4j answers over Bolt");
        Neo { rt, graph }
    }

    /// Run a statement, panicking with it when it fails.
    pub fn run(&self, cypher: &str) {
        self.rt
            .block_on(self.graph.run(query(cypher)))
            .unwrap_or_else(|e| panic!("{cypher}: {e}"));
    }

    pub fn run_query(&self, q: Query) {
        self.rt.block_on(self.graph.run(q)).unwrap();
    }

    pub fn rows(&self, cypher: &str) -> Vec<Row> {
        self.rt.block_on(async {
            let mut stream = self
                .graph
                .execute(query(cypher))
                .await
                .unwrap_or_else(|e| panic!("{cypher}: {e}"));
            let mut rows = Vec::new();
            while let Some(row) = stream.next().await.unwrap() {
                rows.push(row);
            }
            rows
        })
    }

    /// The integer a query returns as `n`.
    pub fn count(&self, cypher: &str) -> i64 {
        self.rows(cypher)[0].get::<i64>("n").unwrap()
    }

    /// An empty graph without constraints or indexes (but the lookup ones):
    /// whole-server work, under `exclusive(&[Neo4j])`.
    pub fn wipe(&self) {
        for row in self.rows("SHOW CONSTRAINTS YIELD name RETURN name") {
            let name: String = row.get("name").unwrap();
            self.run(&format!("DROP CONSTRAINT `{name}`"));
        }
        for row in self.rows("SHOW INDEXES YIELD name, type WHERE type <> 'LOOKUP' RETURN name") {
            let name: String = row.get("name").unwrap();
            self.run(&format!("DROP INDEX `{name}`"));
        }
        self.run("MATCH (n) CALL { WITH n DETACH DELETE n } IN TRANSACTIONS OF 10000 ROWS");
    }
}
