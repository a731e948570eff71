//! How a restore schedules its stores (`--parallel auto|all|none`): in
//! lanes that run at once, each lane's stores one after the other. The
//! stores are separate servers, so any schedule is safe; which is fastest
//! depends on whether their servers share this machine's cores with each
//! other and with itbackup.
//!
//! Measured on this project's 2-core machine with the three servers on it
//! (bench/RESULTS.md, recovery drill, reference set): all at once 80 s
//! against 106 s one after the other, the Neo4j load (64 s alone) the long
//! pole. `auto` therefore starts the longest restore first and runs the
//! others one after the other beside it (two lanes on two cores): the short
//! ones fit in the long one's time without three servers fighting over two
//! cores.

use serde::Serialize;

use crate::service::Service;
use crate::stores::Store;
use crate::target::Target;

/// `--parallel`: how stores are scheduled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Parallel {
    /// Decide from where the servers run, the cores this machine has and
    /// how long each store took to back up.
    #[default]
    Auto,
    /// Every store at once.
    All,
    /// One store after the other.
    None,
}

/// The schedule a run follows, and why (the drill and `restore --json` report it).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    /// Every store at once (each in a lane of its own).
    pub parallel: bool,
    /// Lanes run at once; the stores of a lane one after the other, in order.
    pub lanes: Vec<Vec<Service>>,
    pub reason: String,
}

impl Plan {
    /// "at once", "one after the other", or the lanes: "neo4j | postgres, opensearch".
    pub fn describe(&self) -> String {
        match self.lanes.len() {
            _ if self.parallel => "at once".into(),
            0 | 1 => "one after the other".into(),
            _ => self
                .lanes
                .iter()
                .map(|lane| {
                    lane.iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .collect::<Vec<_>>()
                .join(" | "),
        }
    }
}

/// Cores one restore on this machine keeps busy: its server's work and
/// itbackup's beside it (decoding, hashing, sending).
const CORES_PER_LOCAL_RESTORE: usize = 2;

/// The plan for `stores` (each with the seconds its restore is expected to
/// take, longest first wins a lane of its own), of which `local` have their
/// server on this machine, which has `cores` cores.
pub fn decide(choice: Parallel, stores: &[(Service, f64)], local: usize, cores: usize) -> Plan {
    let count = stores.len();
    let one_lane = |reason: String| Plan {
        parallel: count <= 1,
        lanes: vec![stores.iter().map(|(s, _)| *s).collect()],
        reason,
    };
    let every_lane = |reason: String| Plan {
        parallel: true,
        lanes: stores.iter().map(|(s, _)| vec![*s]).collect(),
        reason,
    };
    match choice {
        Parallel::All => every_lane("--parallel all".into()),
        Parallel::None => one_lane("--parallel none".into()),
        Parallel::Auto if count <= 1 => one_lane("one store".into()),
        Parallel::Auto if local >= 2 && cores < CORES_PER_LOCAL_RESTORE * local => {
            let lanes = (cores / CORES_PER_LOCAL_RESTORE).max(2);
            if lanes >= count {
                return every_lane(format!(
                    "{local} of the servers run on this machine, whose {cores} core(s) they share: {count} restores at once"
                ));
            }
            let lanes = longest_first(stores, lanes);
            let (longest, seconds) = stores
                .iter()
                .max_by(|a, b| a.1.total_cmp(&b.1))
                .expect("more than one store");
            Plan {
                parallel: false,
                lanes,
                reason: format!(
                    "{local} of the servers run on this machine, whose {cores} core(s) they would share with each other and with itbackup: the longest restore ({longest}, its backup took {seconds:.0} s) first, the others one after the other beside it"
                ),
            }
        }
        Parallel::Auto => every_lane(match local {
            0 | 1 => format!("{} of the {count} servers run elsewhere: at once, the restore takes as long as the slowest", count - local),
            _ => format!("{cores} cores are enough for the {local} servers on this machine to restore at once"),
        }),
    }
}

/// The stores spread over `lanes` lanes, longest first, each into the lane
/// that would end first (the longest-processing-time rule).
fn longest_first(stores: &[(Service, f64)], lanes: usize) -> Vec<Vec<Service>> {
    let mut sorted: Vec<&(Service, f64)> = stores.iter().collect();
    sorted.sort_by(|a, b| b.1.total_cmp(&a.1));
    let mut out: Vec<(f64, Vec<Service>)> = vec![(0.0, Vec::new()); lanes];
    for (service, seconds) in sorted {
        let lane = out
            .iter_mut()
            .min_by(|a, b| a.0.total_cmp(&b.0))
            .expect("at least one lane");
        lane.0 += seconds;
        lane.1.push(*service);
    }
    out.into_iter()
        .map(|(_, lane)| lane)
        .filter(|lane| !lane.is_empty())
        .collect()
}

/// The plan for restoring `stores` (whose tools run as `target` says), each
/// with the seconds its restore is expected to take.
pub async fn plan(
    choice: Parallel,
    stores: &[Box<dyn Store>],
    expected_seconds: impl Fn(Service) -> f64,
    target: &Target,
) -> Plan {
    let mut local = 0;
    if choice == Parallel::Auto {
        for store in stores {
            // Compose containers run on this host, whatever address they publish.
            if matches!(target, Target::Compose(_))
                || crate::address::on_this_machine(&store.address()).await
            {
                local += 1;
            }
        }
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let estimates: Vec<(Service, f64)> = stores
        .iter()
        .map(|s| (s.service(), expected_seconds(s.service())))
        .collect();
    decide(choice, &estimates, local, cores)
}

/// Run `work` for every item as `plan` says: its lanes at once, each lane's
/// items one after the other. The results come in the items' order.
pub async fn run_planned<'a, T, R, F, Fut>(
    plan: &Plan,
    items: &'a [T],
    service_of: impl Fn(&T) -> Service,
    work: F,
) -> Vec<R>
where
    F: Fn(&'a T) -> Fut,
    Fut: std::future::Future<Output = R>,
{
    let index_of = |service: &Service| items.iter().position(|i| service_of(i) == *service);
    let lanes = plan.lanes.iter().map(|lane| {
        let work = &work;
        let indices: Vec<usize> = lane.iter().filter_map(index_of).collect();
        async move {
            let mut done = Vec::new();
            for index in indices {
                done.push((index, work(&items[index]).await));
            }
            done
        }
    });
    let mut results: Vec<(usize, R)> = futures::future::join_all(lanes)
        .await
        .into_iter()
        .flatten()
        .collect();
    results.sort_by_key(|(index, _)| *index);
    results.into_iter().map(|(_, r)| r).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use Service::{Neo4j, Opensearch, Postgres};

    const SET: [(Service, f64); 3] = [(Opensearch, 18.0), (Neo4j, 66.0), (Postgres, 25.0)];

    #[test]
    fn three_servers_on_two_cores_restore_the_longest_beside_the_others() {
        let auto = decide(Parallel::Auto, &SET, 3, 2);
        assert!(!auto.parallel, "not everything at once");
        assert_eq!(auto.lanes, vec![vec![Neo4j], vec![Postgres, Opensearch]]);
        assert_eq!(auto.describe(), "neo4j | postgres, opensearch");
        assert!(auto.reason.contains("3 of the servers run on this machine"));
        assert!(
            auto.reason.contains("the longest restore (neo4j"),
            "{}",
            auto.reason
        );
        let all = decide(Parallel::All, &SET, 3, 2);
        assert!(all.parallel, "unless told");
        assert_eq!(all.lanes.len(), 3);
        let none = decide(Parallel::None, &SET, 0, 64);
        assert!(!none.parallel);
        assert_eq!(none.lanes, vec![vec![Opensearch, Neo4j, Postgres]]);
        assert_eq!(none.describe(), "one after the other");
        assert!(decide(Parallel::Auto, &SET, 3, 8).parallel, "enough cores");
        assert!(
            decide(Parallel::Auto, &SET, 1, 2).parallel,
            "two servers elsewhere"
        );
        assert!(
            decide(Parallel::Auto, &SET[..2], 0, 1).parallel,
            "all elsewhere"
        );
        assert!(
            decide(Parallel::Auto, &SET[..2], 2, 2).parallel,
            "two lanes for two stores"
        );
        assert_eq!(decide(Parallel::Auto, &SET[..1], 1, 64).lanes.len(), 1);
    }

    #[test]
    fn stores_go_to_the_lane_that_ends_first() {
        let four = [
            (Opensearch, 10.0),
            (Neo4j, 40.0),
            (Postgres, 35.0),
            (Opensearch, 30.0),
        ];
        assert_eq!(
            longest_first(&four, 2),
            vec![vec![Neo4j, Opensearch], vec![Postgres, Opensearch]]
        );
    }

    #[tokio::test]
    async fn planned_work_runs_lane_by_lane_and_answers_in_order() {
        use std::sync::Mutex;
        let plan = decide(Parallel::Auto, &SET, 3, 2);
        let started = Mutex::new(Vec::new());
        let items = [Opensearch, Neo4j, Postgres];
        let results = run_planned(
            &plan,
            &items,
            |s| *s,
            |s| {
                started.lock().unwrap().push(*s);
                let s = *s;
                async move { s.as_str().len() }
            },
        )
        .await;
        assert_eq!(results, vec![10, 5, 8], "in the items' order");
        let started = started.into_inner().unwrap();
        let pos = |s| started.iter().position(|x| *x == s).unwrap();
        assert!(
            pos(Postgres) < pos(Opensearch),
            "one lane, longest first: {started:?}"
        );
    }
}
