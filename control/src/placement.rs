//! Room placement: which node hosts a call's room. Chosen once, when the
//! call is created, and written with the call (the same compare-and-set),
//! so every participant's join info names the same node; moved only when
//! that node is gone, again by compare-and-set, so participants asking for
//! fresh tokens at once all meet on the one node the first of them chose.
//!
//! The rule: the region most of the call's people are in (the caller's
//! `X-Switchboard-Region` or device hint counts first on a tie, each
//! callee's most recently seen device's hint counts once), else the
//! configured fallback region, else any region; there, the active node with
//! the fewest participants. Nodes are read from this node's copy of the
//! registry ([`NodeSnapshot`], refreshed at every heartbeat), so a create
//! costs no extra round trip to Redis. A burst of creates within one
//! heartbeat lands on the same least-loaded node: the load is as old as
//! the last beat (2 s).
//!
//! Placement is per room; membership stays per participant in the SFU, so
//! a room that spans nodes later (a cascade) extends this record rather
//! than replacing it.

use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

use crate::nodes::{NodeRecord, NodeState};

/// Where a call's room is: a node, and how many times it has moved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Placement {
    pub node_id: String,
    /// The node's region: a room moved off a gone node stays in it when
    /// another node serves it.
    pub region: String,
    /// 1 when the call was created; +1 each time the room moves to another
    /// node because its node was gone.
    pub epoch: u32,
}

/// A region name as operators configure them and devices hint them:
/// 1-32 characters of `[a-z0-9-]` (`eu-west`, `us-east-1`).
pub fn valid_region(region: &str) -> bool {
    (1..=32).contains(&region.len())
        && region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// The node a new room goes to among `nodes`, for people in `regions`
/// (the caller's first). Only active nodes take rooms; `None` if there is
/// none.
pub fn choose<'a>(
    nodes: &'a [NodeRecord],
    regions: &[&str],
    fallback_region: &str,
) -> Option<(&'a NodeRecord, Choice)> {
    let active: Vec<&NodeRecord> = nodes
        .iter()
        .filter(|n| n.state == NodeState::Active)
        .collect();
    let served = |region: &str| active.iter().any(|n| n.region == region);
    // Most votes wins; on a tie the region named first (the caller's).
    let mut best: Option<(&str, usize)> = None;
    for (i, region) in regions.iter().enumerate() {
        if regions[..i].contains(region) || !served(region) {
            continue;
        }
        let votes = regions.iter().filter(|r| *r == region).count();
        if best.is_none_or(|(_, most)| votes > most) {
            best = Some((region, votes));
        }
    }
    let (region, choice) = match best {
        Some((region, _)) => (Some(region), Choice::Participants),
        None if served(fallback_region) => (Some(fallback_region), Choice::Fallback),
        None => (None, Choice::Anywhere),
    };
    active
        .into_iter()
        .filter(|n| region.is_none_or(|r| n.region == r))
        .min_by(|a, b| {
            (a.load.participants, a.load.rooms, &a.node_id).cmp(&(
                b.load.participants,
                b.load.rooms,
                &b.node_id,
            ))
        })
        .map(|node| (node, choice))
}

/// Why a room went where it did (the `switchboard_placements_total` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    /// A region the call's people are in.
    Participants,
    /// None of theirs has a node: the configured fallback region.
    Fallback,
    /// Neither has an active node: the least loaded one anywhere.
    Anywhere,
}

impl Choice {
    pub fn label(self) -> &'static str {
        match self {
            Choice::Participants => "participants",
            Choice::Fallback => "fallback",
            Choice::Anywhere => "anywhere",
        }
    }
}

/// The node registry as this node last read it: the heartbeat replaces it
/// every beat. Empty until the first beat, and on nodes without a
/// registry (call control alone, in tests): then calls are not placed and
/// any node takes their joins.
#[derive(Default)]
pub struct NodeSnapshot {
    nodes: RwLock<Vec<NodeRecord>>,
}

impl NodeSnapshot {
    pub fn replace(&self, nodes: Vec<NodeRecord>) {
        *self.nodes.write().unwrap_or_else(|e| e.into_inner()) = nodes;
    }

    pub fn all(&self) -> Vec<NodeRecord> {
        self.nodes.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The node, if it heartbeat recently (active or draining).
    pub fn get(&self, node_id: &str) -> Option<NodeRecord> {
        self.nodes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|n| n.node_id == node_id)
            .cloned()
    }
}

/// Places rooms from the snapshot, and counts where they went.
pub struct Placer {
    pub nodes: Arc<NodeSnapshot>,
    pub fallback_region: String,
    pub placements: Option<prometheus::IntCounterVec>,
    /// The registry itself, asked before a room is moved: the snapshot
    /// can be up to a heartbeat older than a node another node placed on.
    pub registry: Option<Arc<dyn crate::nodes::NodeRegistry>>,
}

impl Placer {
    pub fn new(nodes: Arc<NodeSnapshot>, fallback_region: String) -> Placer {
        Placer {
            nodes,
            fallback_region,
            placements: None,
            registry: None,
        }
    }

    /// Confirms "gone" with `registry` before moving a room.
    pub fn with_registry(mut self, registry: Arc<dyn crate::nodes::NodeRegistry>) -> Placer {
        self.registry = Some(registry);
        self
    }

    /// Counts placements in `switchboard_placements_total{region, choice}`
    /// (region: the chosen node's; `none` when no node was active).
    pub fn with_metrics(mut self, registry: &prometheus::Registry) -> Placer {
        let counter = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "switchboard_placements_total",
                "Rooms placed (new calls and rooms moved off a gone node), by the chosen node's region and why it was chosen",
            ),
            &["region", "choice"],
        )
        .expect("a valid metric");
        match registry.register(Box::new(counter.clone())) {
            Ok(()) => self.placements = Some(counter),
            Err(e) => tracing::warn!(error = %e, "switchboard_placements_total not registered"),
        }
        self
    }

    /// Where a new call's room goes; `None` when no node is known (a node
    /// with no registry, or before its first heartbeat): then it is not
    /// placed and any node takes its joins.
    pub fn place(&self, regions: &[&str]) -> Option<Placement> {
        self.pick(regions, None).map(|node| Placement {
            node_id: node.node_id,
            region: node.region,
            epoch: 1,
        })
    }

    /// Whether regions can change where a room goes: active nodes serve
    /// more than one. Else the caller's region hint is not worth a read.
    pub fn regions_matter(&self) -> bool {
        let nodes = self.nodes.all();
        let mut active = nodes.iter().filter(|n| n.state == NodeState::Active);
        active
            .next()
            .is_some_and(|first| active.any(|n| n.region != first.region))
    }

    /// Whether `placement` still names a node that heartbeats. A draining
    /// node keeps the rooms it has: their calls finish there. A node the
    /// snapshot lacks is looked up in the registry (and the snapshot
    /// refreshed): it may have started since the last heartbeat. When the
    /// registry cannot answer, the node counts as alive: a room is never
    /// moved on a guess.
    pub fn is_alive(&self, placement: &Placement) -> bool {
        if self.nodes.get(&placement.node_id).is_some() {
            return true;
        }
        let Some(registry) = &self.registry else {
            return false;
        };
        match registry.nodes(crate::unix_millis()) {
            Ok(live) => {
                let alive = live.iter().any(|n| n.node_id == placement.node_id);
                self.nodes.replace(live);
                alive
            }
            Err(e) => {
                tracing::warn!(node_id = %placement.node_id, error = %e, "registry unavailable: the room stays where it is");
                true
            }
        }
    }

    /// A new home for a room whose node is gone: its region if another
    /// node serves it; `None` if no active node is left.
    pub fn move_from(&self, gone: &Placement) -> Option<Placement> {
        self.pick(&[&gone.region], Some(&gone.node_id))
            .map(|node| Placement {
                node_id: node.node_id,
                region: node.region,
                epoch: gone.epoch + 1,
            })
    }

    fn pick(&self, regions: &[&str], not: Option<&str>) -> Option<NodeRecord> {
        let mut nodes = self.nodes.all();
        nodes.retain(|n| Some(n.node_id.as_str()) != not);
        let chosen = choose(&nodes, regions, &self.fallback_region);
        if let Some(counter) = &self.placements {
            let (region, choice) =
                chosen.map_or(("none", "none"), |(n, c)| (n.region.as_str(), c.label()));
            counter.with_label_values(&[region, choice]).inc();
        }
        chosen.map(|(node, _)| node.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nodes::NodeLoad;

    fn node(id: &str, region: &str, participants: u64, state: NodeState) -> NodeRecord {
        NodeRecord {
            node_id: id.into(),
            region: region.into(),
            public_url: format!("http://{id}"),
            media_addresses: vec![],
            turn_urls: vec![],
            state,
            load: NodeLoad {
                rooms: participants / 2,
                participants,
            },
            started_at: 0,
            heartbeat_at: 0,
        }
    }

    fn chosen(nodes: &[NodeRecord], regions: &[&str], fallback: &str) -> Option<(String, Choice)> {
        choose(nodes, regions, fallback).map(|(n, c)| (n.node_id.clone(), c))
    }

    #[test]
    fn the_least_loaded_active_node_of_the_callers_region_takes_the_room() {
        let nodes = [
            node("eu-1", "eu", 10, NodeState::Active),
            node("eu-2", "eu", 4, NodeState::Active),
            node("eu-3", "eu", 0, NodeState::Draining),
            node("us-1", "us", 0, NodeState::Active),
        ];
        assert_eq!(
            chosen(&nodes, &["eu", "us"], "us"),
            Some(("eu-2".into(), Choice::Participants))
        );
    }

    #[test]
    fn the_region_most_people_are_in_wins_and_the_caller_breaks_ties() {
        let nodes = [
            node("eu-1", "eu", 0, NodeState::Active),
            node("us-1", "us", 0, NodeState::Active),
        ];
        assert_eq!(chosen(&nodes, &["eu", "us", "us"], "eu").unwrap().0, "us-1");
        assert_eq!(chosen(&nodes, &["us", "eu"], "eu").unwrap().0, "us-1");
        assert_eq!(chosen(&nodes, &["eu", "us"], "us").unwrap().0, "eu-1");
    }

    #[test]
    fn regions_without_an_active_node_fall_back_then_go_anywhere() {
        let nodes = [
            node("eu-1", "eu", 0, NodeState::Draining),
            node("us-1", "us", 3, NodeState::Active),
            node("ap-1", "ap", 1, NodeState::Active),
        ];
        assert_eq!(
            chosen(&nodes, &["eu", "eu"], "us"),
            Some(("us-1".into(), Choice::Fallback))
        );
        assert_eq!(
            chosen(&nodes, &[], "moon"),
            Some(("ap-1".into(), Choice::Anywhere))
        );
        let draining = [node("eu-1", "eu", 0, NodeState::Draining)];
        assert_eq!(chosen(&draining, &["eu"], "eu"), None);
    }

    #[test]
    fn a_moved_room_goes_to_another_node_with_the_next_epoch() {
        let snapshot = Arc::new(NodeSnapshot::default());
        snapshot.replace(vec![
            node("eu-1", "eu", 0, NodeState::Active),
            node("eu-2", "eu", 9, NodeState::Active),
        ]);
        let placer = Placer::new(snapshot.clone(), "eu".into());
        assert!(!placer.regions_matter());
        let first = placer.place(&["eu"]).unwrap();
        let eu_1 = Placement {
            node_id: "eu-1".into(),
            region: "eu".into(),
            epoch: 1,
        };
        assert_eq!(first, eu_1);
        assert!(placer.is_alive(&first));
        snapshot.replace(vec![
            node("us-1", "us", 0, NodeState::Active),
            node("eu-2", "eu", 9, NodeState::Active),
        ]);
        assert!(!placer.is_alive(&first));
        assert!(placer.regions_matter());
        let moved = placer.move_from(&first).unwrap();
        assert_eq!((moved.node_id.as_str(), moved.epoch), ("eu-2", 2));
        // Not back onto the node it left, even while that one still shows.
        snapshot.replace(vec![node("eu-1", "eu", 0, NodeState::Active)]);
        assert_eq!(placer.move_from(&first), None);
        snapshot.replace(vec![]);
        assert_eq!(placer.place(&["eu"]), None);
    }

    #[test]
    fn a_node_newer_than_the_snapshot_is_alive_if_the_registry_lists_it() {
        use crate::nodes::NodeRegistry;
        let registry = Arc::new(crate::nodes::LocalNodes::default());
        let newcomer = node("eu-3", "eu", 0, NodeState::Active);
        registry
            .heartbeat(&newcomer, crate::unix_millis(), 60_000)
            .unwrap();
        let snapshot = Arc::new(NodeSnapshot::default());
        let placed = Placement {
            node_id: "eu-3".into(),
            region: "eu".into(),
            epoch: 1,
        };
        let blind = Placer::new(snapshot.clone(), "eu".into());
        assert!(!blind.is_alive(&placed));
        let placer = Placer::new(snapshot.clone(), "eu".into()).with_registry(registry.clone());
        assert!(placer.is_alive(&placed));
        assert!(snapshot.get("eu-3").is_some(), "the snapshot was refreshed");
        registry.leave("eu-3").unwrap();
        snapshot.replace(vec![]);
        assert!(!placer.is_alive(&placed));
    }

    #[test]
    fn regions_are_short_lowercase_names() {
        assert!(valid_region("eu-west-1"));
        for bad in ["", "EU", "eu west", "eu_west", &"a".repeat(33), "ü"] {
            assert!(!valid_region(bad), "{bad:?}");
        }
    }
}
