//! The flow's edges resolved to node positions, and what validation and the runner ask of
//! them: cycles and ancestors.

use std::collections::HashMap;

use super::model::{AgentFlow, ENTRY};

/// The edges of a flow by node position.
#[derive(Debug, Clone)]
pub(super) struct Graph {
    /// Node id → position (the first node with that id).
    pub index: HashMap<String, usize>,
    /// Per node, the positions of the edges that enter it.
    pub incoming: Vec<Vec<usize>>,
    /// Per node, the positions of the edges that leave it.
    pub outgoing: Vec<Vec<usize>>,
    /// Per edge, its source (`None`: the entry) and its target; `None` for an edge whose
    /// ends name no node (validation reports those).
    pub ends: Vec<Option<(Option<usize>, usize)>>,
}

/// An edge that closes a cycle, and the cycle's node positions (from the edge's target
/// round to its source).
pub(super) struct BackEdge {
    pub edge: usize,
    pub cycle: Vec<usize>,
}

impl Graph {
    pub fn new(flow: &AgentFlow) -> Graph {
        let mut index = HashMap::new();
        for (i, node) in flow.nodes.iter().enumerate() {
            index.entry(node.id.clone()).or_insert(i);
        }
        let n = flow.nodes.len();
        let (mut incoming, mut outgoing) = (vec![Vec::new(); n], vec![Vec::new(); n]);
        let ends = flow
            .edges
            .iter()
            .enumerate()
            .map(|(e, edge)| {
                let source = match index.get(&edge.source) {
                    Some(&s) => Some(s),
                    None if edge.source == ENTRY => None,
                    None => return None,
                };
                let target = *index.get(&edge.target)?;
                if let Some(s) = source {
                    outgoing[s].push(e);
                }
                incoming[target].push(e);
                Some((source, target))
            })
            .collect();
        Graph {
            index,
            incoming,
            outgoing,
            ends,
        }
    }

    /// The source node of edge `e` (`None` for the entry or a dangling edge).
    pub fn source(&self, e: usize) -> Option<usize> {
        self.ends[e].and_then(|(s, _)| s)
    }

    /// The edges that close a cycle, found by a depth-first walk.
    pub fn back_edges(&self) -> Vec<BackEdge> {
        #[derive(Clone, Copy, PartialEq)]
        enum Mark {
            New,
            OnPath,
            Done,
        }
        let n = self.incoming.len();
        let mut mark = vec![Mark::New; n];
        let mut found = Vec::new();
        for start in 0..n {
            if mark[start] != Mark::New {
                continue;
            }
            mark[start] = Mark::OnPath;
            let mut path: Vec<(usize, usize)> = vec![(start, 0)];
            while let Some((node, next)) = path.last().copied() {
                let Some(&e) = self.outgoing[node].get(next) else {
                    mark[node] = Mark::Done;
                    path.pop();
                    continue;
                };
                if let Some(top) = path.last_mut() {
                    top.1 += 1;
                }
                let Some((_, target)) = self.ends[e] else {
                    continue;
                };
                match mark[target] {
                    Mark::New => {
                        mark[target] = Mark::OnPath;
                        path.push((target, 0));
                    }
                    Mark::OnPath => {
                        let from = path.iter().position(|&(p, _)| p == target).unwrap_or(0);
                        let cycle = path[from..].iter().map(|&(p, _)| p).collect();
                        found.push(BackEdge { edge: e, cycle });
                    }
                    Mark::Done => {}
                }
            }
        }
        found
    }

    /// For an acyclic graph, per node, which nodes are its ancestors (`result[n][a]`).
    pub fn ancestors(&self) -> Vec<Vec<bool>> {
        let n = self.incoming.len();
        let mut waiting: Vec<usize> = (0..n)
            .map(|v| {
                let from_nodes = self.incoming[v]
                    .iter()
                    .filter(|&&e| self.source(e).is_some());
                from_nodes.count()
            })
            .collect();
        let mut ready: Vec<usize> = (0..n).filter(|&v| waiting[v] == 0).collect();
        let mut ancestors = vec![vec![false; n]; n];
        while let Some(v) = ready.pop() {
            for &e in &self.outgoing[v] {
                let Some((_, w)) = self.ends[e] else { continue };
                let from = ancestors[v].clone();
                for (t, f) in ancestors[w].iter_mut().zip(from) {
                    *t |= f;
                }
                ancestors[w][v] = true;
                waiting[w] -= 1;
                if waiting[w] == 0 {
                    ready.push(w);
                }
            }
        }
        ancestors
    }
}
