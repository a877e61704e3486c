//! Value kinds shared by broker settings and topic configs: parsing and range checks in one place.

/// What a setting accepts. Ranges are inclusive.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    Int {
        min: i64,
        max: i64,
    },
    Long {
        min: i64,
    },
    Bool,
    Choice(&'static [&'static str]),
    /// Kafka's `max.connections.per.ip.overrides`: comma-separated `ip:count` (a LIST).
    IpCounts,
    /// Kafka's `*.replication.throttled.replicas`: empty, `*`, or a comma-separated list of
    /// `partition:broker` (a LIST).
    ReplicaList,
    /// A name of at most this many printable characters (`broker.rack`); empty is allowed.
    Name {
        max: usize,
    },
}

impl Kind {
    /// Kafka's type name for DescribeConfigs v3+ (`config_type`): 1 BOOLEAN, 2 STRING, 3 INT,
    /// 4 SHORT, 5 LONG, 6 DOUBLE, 7 LIST ...
    pub fn config_type(&self) -> i8 {
        match self {
            Kind::Int { .. } => 3,
            Kind::Long { .. } => 5,
            Kind::Bool => 1,
            Kind::Choice(_) => 2,
            Kind::IpCounts | Kind::ReplicaList => 7,
            Kind::Name { .. } => 2,
        }
    }

    /// Checks `value` and returns it normalised (trimmed, booleans lower-case).
    pub fn check(&self, name: &str, value: &str) -> Result<String, String> {
        let value = value.trim();
        match *self {
            Kind::Int { min, max } => {
                let n: i64 = value
                    .parse()
                    .map_err(|_| format!("{name}: {value:?} is not an integer"))?;
                if n < min || n > max {
                    return Err(format!("{name}: {n} is outside [{min}, {max}]"));
                }
                Ok(n.to_string())
            }
            Kind::Long { min } => {
                let n: i64 = value
                    .parse()
                    .map_err(|_| format!("{name}: {value:?} is not an integer"))?;
                if n < min {
                    return Err(format!("{name}: {n} is below the minimum {min}"));
                }
                Ok(n.to_string())
            }
            Kind::Bool => match value.to_ascii_lowercase().as_str() {
                "true" => Ok("true".into()),
                "false" => Ok("false".into()),
                _ => Err(format!("{name}: {value:?} is not true or false")),
            },
            Kind::IpCounts => {
                let mut entries = Vec::new();
                for entry in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
                    let (ip, count) = parse_ip_count(entry)
                        .ok_or_else(|| format!("{name}: {entry:?} is not ip:count"))?;
                    entries.push(format!("{ip}:{count}"));
                }
                Ok(entries.join(","))
            }
            Kind::ReplicaList if value == "*" => Ok(value.to_string()),
            Kind::ReplicaList => {
                let mut entries = Vec::new();
                for entry in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
                    let (p, b) = parse_replica(entry).ok_or_else(|| {
                        format!("{name}: {entry:?} is not partition:broker (or the whole value *)")
                    })?;
                    entries.push(format!("{p}:{b}"));
                }
                Ok(entries.join(","))
            }
            Kind::Name { max } => {
                if value.len() > max || value.chars().any(|c| c.is_control()) {
                    return Err(format!(
                        "{name}: {value:?} must be at most {max} printable characters"
                    ));
                }
                Ok(value.to_string())
            }
            Kind::Choice(options) => {
                if options.contains(&value) {
                    Ok(value.to_string())
                } else {
                    Err(format!(
                        "{name}: {value:?} is not one of {}",
                        options.join(", ")
                    ))
                }
            }
        }
    }
}

/// Parses a value that [`Kind::check`] already accepted.
pub fn int(value: &str) -> i64 {
    value.parse().unwrap_or_default()
}

/// One `ip:count` entry; an IPv6 address may be bracketed (`[::1]:5`) or not (`::1:5`: the
/// count follows the last colon).
fn parse_ip_count(entry: &str) -> Option<(std::net::IpAddr, usize)> {
    let (ip, count) = entry.rsplit_once(':')?;
    let ip = ip.trim().trim_start_matches('[').trim_end_matches(']');
    Some((ip.parse().ok()?, count.trim().parse().ok()?))
}

/// Parses a value that [`Kind::IpCounts`] already accepted.
pub fn ip_counts(value: &str) -> std::collections::BTreeMap<std::net::IpAddr, usize> {
    value
        .split(',')
        .filter_map(|e| parse_ip_count(e.trim()))
        .collect()
}

fn parse_replica(entry: &str) -> Option<(i32, i32)> {
    let (p, b) = entry.split_once(':')?;
    let (p, b): (i32, i32) = (p.trim().parse().ok()?, b.trim().parse().ok()?);
    (p >= 0 && b >= 0).then_some((p, b))
}

/// Whether a [`Kind::ReplicaList`] value lists replica `partition:broker`.
pub fn lists_replica(value: &str, partition: i32, broker: i32) -> bool {
    value == "*"
        || value
            .split(',')
            .filter_map(|e| parse_replica(e.trim()))
            .any(|r| r == (partition, broker))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replica_lists() {
        let kind = Kind::ReplicaList;
        assert_eq!(kind.check("x", "").unwrap(), "");
        assert_eq!(kind.check("x", " * ").unwrap(), "*");
        let v = kind.check("x", "0:1, 1:2,").unwrap();
        assert_eq!(v, "0:1,1:2");
        assert!(lists_replica(&v, 1, 2));
        assert!(!lists_replica(&v, 1, 1));
        assert!(lists_replica("*", 7, 3));
        assert!(!lists_replica("", 0, 1));
        assert!(kind.check("x", "0:-1").is_err());
        assert!(kind.check("x", "0").is_err());
        assert!(kind.check("x", "*,0:1").is_err());
    }

    #[test]
    fn ip_count_lists() {
        let kind = Kind::IpCounts;
        assert_eq!(kind.check("x", "").unwrap(), "");
        let v = kind.check("x", " 127.0.0.1:5, [::1]:7,10.0.0.2:0").unwrap();
        assert_eq!(v, "127.0.0.1:5,::1:7,10.0.0.2:0");
        let parsed = ip_counts(&v);
        assert_eq!(parsed.get(&"::1".parse().unwrap()), Some(&7));
        assert_eq!(parsed.get(&"127.0.0.1".parse().unwrap()), Some(&5));
        assert!(kind.check("x", "localhost:5").is_err());
        assert!(kind.check("x", "127.0.0.1").is_err());
        assert!(kind.check("x", "127.0.0.1:-1").is_err());
    }
}
