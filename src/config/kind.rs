//! Value kinds shared by broker settings and topic configs: parsing and range checks in one place.

/// What a setting accepts. Ranges are inclusive.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    Int { min: i64, max: i64 },
    Long { min: i64 },
    Bool,
    Choice(&'static [&'static str]),
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
