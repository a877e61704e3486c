//! Replica placement (cluster issue A): which brokers hold each new partition, and which of them
//! is its preferred leader (the first). A pure function of the brokers, their racks and the load
//! already placed, so the controller's choice can be tested without a cluster.
//!
//! Rules, as Kafka's rack-aware assignment aims for:
//! - a partition's replicas are on distinct brokers, and — when every broker has a rack — on as
//!   many distinct racks as there are (all of them when RF ≥ racks);
//! - replicas and preferred leaders spread evenly: each new replica goes to the eligible broker
//!   holding the fewest of this topic so far, then the fewest overall; each preferred leader
//!   likewise; ties broken by a rotation over broker ids so equal loads do not always pick the
//!   lowest id.

use std::collections::{BTreeMap, BTreeSet};

/// A broker as placement sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub id: i32,
    pub rack: Option<String>,
}

/// Replicas and preferred leaders already on each broker (partitions of existing topics).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Load {
    pub replicas: BTreeMap<i32, usize>,
    pub leaders: BTreeMap<i32, usize>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    #[error("replication factor {rf} is larger than the {brokers} available brokers")]
    ReplicationFactor { rf: i16, brokers: usize },
    #[error("replication factor must be positive, got {0}")]
    NonPositive(i16),
}

/// Replicas for `partitions` new partitions of `rf` replicas each, preferred leader first.
pub fn place(
    brokers: &[Candidate],
    load: &Load,
    partitions: i32,
    rf: i16,
) -> Result<Vec<Vec<i32>>, PlacementError> {
    if rf <= 0 {
        return Err(PlacementError::NonPositive(rf));
    }
    let mut brokers: Vec<&Candidate> = brokers.iter().collect();
    brokers.sort_by_key(|b| b.id);
    brokers.dedup_by_key(|b| b.id);
    if rf as usize > brokers.len() {
        return Err(PlacementError::ReplicationFactor {
            rf,
            brokers: brokers.len(),
        });
    }
    let rack_aware = brokers.iter().all(|b| b.rack.is_some());
    let mut replicas: BTreeMap<i32, usize> = brokers
        .iter()
        .map(|b| (b.id, load.replicas.get(&b.id).copied().unwrap_or(0)))
        .collect();
    let mut leaders: BTreeMap<i32, usize> = brokers
        .iter()
        .map(|b| (b.id, load.leaders.get(&b.id).copied().unwrap_or(0)))
        .collect();
    let n = brokers.len();
    // This topic's own counts come first, so one topic is spread evenly whatever else the
    // brokers hold; the brokers' total load breaks ties.
    let mut topic_leaders: BTreeMap<i32, usize> = brokers.iter().map(|b| (b.id, 0)).collect();
    let mut topic_replicas = topic_leaders.clone();
    let mut out = Vec::with_capacity(partitions.max(0) as usize);
    for p in 0..partitions.max(0) as usize {
        // Equal loads are broken by a rotation, so partition p starts looking at broker p.
        let rotation = |i: usize| (i + n - p % n) % n;
        let leader = (0..n)
            .min_by_key(|&i| {
                let id = brokers[i].id;
                (topic_leaders[&id], leaders[&id], replicas[&id], rotation(i))
            })
            .map(|i| brokers[i])
            .expect("at least one broker");
        let mut chosen = vec![leader.id];
        let mut racks: BTreeSet<&str> = leader.rack.as_deref().into_iter().collect();
        *leaders.get_mut(&leader.id).expect("known broker") += 1;
        *replicas.get_mut(&leader.id).expect("known broker") += 1;
        *topic_leaders.get_mut(&leader.id).expect("known broker") += 1;
        *topic_replicas.get_mut(&leader.id).expect("known broker") += 1;
        while chosen.len() < rf as usize {
            let all_racks_used = !rack_aware
                || brokers
                    .iter()
                    .filter(|b| !chosen.contains(&b.id))
                    .all(|b| racks.contains(b.rack.as_deref().unwrap_or_default()));
            let next = (0..n)
                .filter(|&i| !chosen.contains(&brokers[i].id))
                .filter(|&i| {
                    all_racks_used
                        || !racks.contains(brokers[i].rack.as_deref().unwrap_or_default())
                })
                .min_by_key(|&i| {
                    let id = brokers[i].id;
                    (topic_replicas[&id], replicas[&id], rotation(i))
                })
                .map(|i| brokers[i])
                .expect("rf <= brokers");
            chosen.push(next.id);
            if let Some(rack) = next.rack.as_deref() {
                racks.insert(rack);
            }
            *replicas.get_mut(&next.id).expect("known broker") += 1;
            *topic_replicas.get_mut(&next.id).expect("known broker") += 1;
        }
        out.push(chosen);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn brokers(racks: &[Option<&str>]) -> Vec<Candidate> {
        racks
            .iter()
            .enumerate()
            .map(|(i, r)| Candidate {
                id: i as i32 + 1,
                rack: r.map(str::to_string),
            })
            .collect()
    }

    /// Per broker: (replicas, preferred leaderships).
    fn counts(placed: &[Vec<i32>]) -> BTreeMap<i32, (usize, usize)> {
        let mut counts: BTreeMap<i32, (usize, usize)> = BTreeMap::new();
        for replicas in placed {
            for (i, b) in replicas.iter().enumerate() {
                let c = counts.entry(*b).or_default();
                c.0 += 1;
                if i == 0 {
                    c.1 += 1;
                }
            }
        }
        counts
    }

    fn spread(values: impl Iterator<Item = usize> + Clone) -> usize {
        values.clone().max().unwrap_or(0) - values.min().unwrap_or(0)
    }

    #[test]
    fn six_brokers_in_three_racks_at_rf_3_span_every_rack_evenly() {
        let b = brokers(&[
            Some("a"),
            Some("a"),
            Some("b"),
            Some("b"),
            Some("c"),
            Some("c"),
        ]);
        let rack = |id: i32| b[(id - 1) as usize].rack.clone().unwrap();
        for partitions in 1..=60 {
            let placed = place(&b, &Load::default(), partitions, 3).unwrap();
            assert_eq!(placed.len(), partitions as usize);
            for replicas in &placed {
                let racks: BTreeSet<String> = replicas.iter().map(|&id| rack(id)).collect();
                assert_eq!(racks.len(), 3, "{replicas:?} spans {racks:?}");
                let distinct: BTreeSet<_> = replicas.iter().collect();
                assert_eq!(distinct.len(), 3);
            }
            let mut c = counts(&placed);
            for id in 1..=6 {
                c.entry(id).or_default();
            }
            assert!(
                spread(c.values().map(|c| c.0)) <= 1,
                "{partitions}: replicas {c:?}"
            );
            assert!(
                spread(c.values().map(|c| c.1)) <= 1,
                "{partitions}: leaders {c:?}"
            );
        }
    }

    #[test]
    fn without_racks_any_rf_spreads_and_the_load_already_placed_counts() {
        let b = brokers(&[None, None, None, Some("a")]);
        for rf in 1..=4 {
            let placed = place(&b, &Load::default(), 12, rf).unwrap();
            let c = counts(&placed);
            assert!(spread(c.values().map(|c| c.0)) <= 1, "rf {rf}: {c:?}");
            assert!(placed.iter().all(|r| r.len() == rf as usize));
        }
        // Broker 1 already leads and holds much: new partitions go elsewhere first.
        let load = Load {
            replicas: BTreeMap::from([(1, 10)]),
            leaders: BTreeMap::from([(1, 10)]),
        };
        let placed = place(&b, &load, 3, 1).unwrap();
        assert!(placed.iter().all(|r| r[0] != 1), "{placed:?}");
    }

    #[test]
    fn an_rf_above_the_brokers_is_refused() {
        let b = brokers(&[None, None]);
        assert_eq!(
            place(&b, &Load::default(), 1, 3),
            Err(PlacementError::ReplicationFactor { rf: 3, brokers: 2 })
        );
        assert_eq!(
            place(&b, &Load::default(), 1, 0),
            Err(PlacementError::NonPositive(0))
        );
    }
}
