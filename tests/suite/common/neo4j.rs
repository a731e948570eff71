//! A blocking client of the testenv Neo4j over Bolt, so tests stay plain
//! functions that can hold their server locks.
use neo4rs::{query, Graph, Query, Row};

pub struct Neo {
    pub rt: tokio::runtime::Runtime,
    pub graph: Graph,
}

impl Neo {
    pub fn connect() -> Neo {
        Neo::try_connect().unwrap_or_else(|e| panic!("the testenv Neo4j answers over Bolt: {e}"))
    }

    /// A connection, or why there is none (a server a killed run left
    /// down is then a failed check with its reason, not a panic).
    pub fn try_connect() -> Result<Neo, String> {
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
            .map_err(|e| format!("Neo4j does not answer over Bolt: {e}"))?;
        Ok(Neo { rt, graph })
    }

    /// The string a query returns as `r` in its first row, or why it
    /// could not be read.
    pub fn try_single(&self, cypher: &str) -> Result<String, String> {
        self.rt.block_on(async {
            let mut rows = self
                .graph
                .execute(query(cypher))
                .await
                .map_err(|e| format!("{cypher}: {e}"))?;
            let row = rows
                .next()
                .await
                .map_err(|e| format!("{cypher}: {e}"))?
                .ok_or_else(|| format!("{cypher}: no row"))?;
            row.get::<String>("r").map_err(|e| format!("{cypher}: {e}"))
        })
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
