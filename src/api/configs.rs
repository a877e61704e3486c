//! DescribeConfigs, AlterConfigs (replace all overrides of a topic) and IncrementalAlterConfigs
//! (SET / DELETE / APPEND / SUBTRACT per key). Topic configs are dynamic; broker settings are
//! static (set at start with `--set` or the `[kafka]` table) and described read-only.

use std::collections::BTreeMap;
use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult, DescribeConfigsSynonym,
};
use kafka_protocol::messages::{
    alter_configs_response, incremental_alter_configs_response, AlterConfigsRequest,
    AlterConfigsResponse, DescribeConfigsRequest, DescribeConfigsResponse,
    IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse,
};

use super::str_bytes;
use crate::broker::Broker;
use crate::config::TopicConfig;
use crate::error::ApiError;

const TOPIC: i8 = 2;
const BROKER: i8 = 4;
// Kafka's ConfigSource values.
const DYNAMIC_TOPIC_CONFIG: i8 = 1;
const STATIC_BROKER_CONFIG: i8 = 4;
const DEFAULT_CONFIG: i8 = 5;

pub fn describe(
    broker: &Arc<Broker>,
    request: DescribeConfigsRequest,
    version: i16,
) -> DescribeConfigsResponse {
    let results = request
        .resources
        .into_iter()
        .map(|r| {
            let result = DescribeConfigsResult::default()
                .with_resource_type(r.resource_type)
                .with_resource_name(r.resource_name.clone());
            // Null (and, leniently, an empty list) means every config.
            let wanted = |name: &str| match &r.configuration_keys {
                Some(keys) if !keys.is_empty() => keys.iter().any(|k| k.as_str() == name),
                _ => true,
            };
            let entries = match r.resource_type {
                TOPIC => describe_topic(
                    broker,
                    r.resource_name.as_str(),
                    request.include_synonyms,
                    version,
                ),
                BROKER => describe_broker(broker, r.resource_name.as_str(), version),
                other => Err(ApiError::new(
                    ResponseError::InvalidRequest,
                    format!("resource type {other} is not supported"),
                )),
            };
            match entries {
                Ok(entries) => result.with_configs(
                    entries
                        .into_iter()
                        .filter(|e| wanted(e.name.as_str()))
                        .collect(),
                ),
                Err(e) => result
                    .with_error_code(e.code())
                    .with_error_message(Some(str_bytes(e.message))),
            }
        })
        .collect();
    DescribeConfigsResponse::default().with_results(results)
}

fn entry(
    name: &str,
    value: String,
    source: i8,
    read_only: bool,
    config_type: i8,
    doc: &str,
    version: i16,
) -> DescribeConfigsResourceResult {
    let mut e = DescribeConfigsResourceResult::default()
        .with_name(str_bytes(name))
        .with_value(Some(str_bytes(value)))
        .with_read_only(read_only)
        .with_config_source(source);
    if version >= 3 {
        e = e
            .with_config_type(config_type)
            .with_documentation(Some(str_bytes(doc)));
    }
    e
}

fn describe_topic(
    broker: &Broker,
    name: &str,
    synonyms: bool,
    version: i16,
) -> Result<Vec<DescribeConfigsResourceResult>, ApiError> {
    let topic = broker.topic(name).ok_or_else(|| {
        ApiError::new(
            ResponseError::UnknownTopicOrPartition,
            format!("topic {name:?} does not exist"),
        )
    })?;
    Ok(
        TopicConfig::describe(&broker.config.broker, &topic.overrides)
            .map(|(def, value, is_default)| {
                let source = if is_default {
                    DEFAULT_CONFIG
                } else {
                    DYNAMIC_TOPIC_CONFIG
                };
                let mut e = entry(
                    def.name,
                    value.clone(),
                    source,
                    false,
                    def.kind.config_type(),
                    def.doc,
                    version,
                );
                if synonyms {
                    let mut list = Vec::new();
                    if !is_default {
                        list.push(
                            DescribeConfigsSynonym::default()
                                .with_name(str_bytes(def.name))
                                .with_value(Some(str_bytes(value)))
                                .with_source(DYNAMIC_TOPIC_CONFIG),
                        );
                    }
                    if let Some((bdef, bvalue, bdefault)) = broker
                        .config
                        .broker
                        .describe()
                        .find(|(d, _, _)| d.name == def.broker_default)
                    {
                        list.push(
                            DescribeConfigsSynonym::default()
                                .with_name(str_bytes(bdef.name))
                                .with_value(Some(str_bytes(bvalue)))
                                .with_source(if bdefault {
                                    DEFAULT_CONFIG
                                } else {
                                    STATIC_BROKER_CONFIG
                                }),
                        );
                    }
                    e = e.with_synonyms(list);
                }
                e
            })
            .collect(),
    )
}

fn describe_broker(
    broker: &Broker,
    name: &str,
    version: i16,
) -> Result<Vec<DescribeConfigsResourceResult>, ApiError> {
    if !name.is_empty() && name != broker.node_id().to_string() {
        return Err(ApiError::new(
            ResponseError::InvalidRequest,
            format!("broker {name:?} is not this broker ({})", broker.node_id()),
        ));
    }
    Ok(broker
        .config
        .broker
        .describe()
        .map(|(def, value, is_default)| {
            let source = if is_default {
                DEFAULT_CONFIG
            } else {
                STATIC_BROKER_CONFIG
            };
            entry(
                def.name,
                value.to_string(),
                source,
                true,
                def.kind.config_type(),
                def.doc,
                version,
            )
        })
        .collect())
}

fn refuse_broker_change(resource_type: i8) -> Result<(), ApiError> {
    match resource_type {
        TOPIC => Ok(()),
        BROKER => Err(ApiError::new(
            ResponseError::InvalidConfig,
            "broker settings are static in strata: restart with --set NAME=VALUE",
        )),
        other => Err(ApiError::new(
            ResponseError::InvalidRequest,
            format!("resource type {other} is not supported"),
        )),
    }
}

pub async fn alter(broker: &Arc<Broker>, request: AlterConfigsRequest) -> AlterConfigsResponse {
    let mut responses = Vec::with_capacity(request.resources.len());
    for r in request.resources {
        let planned = refuse_broker_change(r.resource_type).map(|()| {
            r.configs
                .iter()
                .filter_map(|c| Some((c.name.to_string(), c.value.as_ref()?.to_string())))
                .collect()
        });
        let (code, message) =
            set_overrides(broker, &r.resource_name, planned, request.validate_only).await;
        responses.push(
            alter_configs_response::AlterConfigsResourceResponse::default()
                .with_resource_type(r.resource_type)
                .with_resource_name(r.resource_name)
                .with_error_code(code)
                .with_error_message(message),
        );
    }
    AlterConfigsResponse::default().with_responses(responses)
}

pub async fn incremental_alter(
    broker: &Arc<Broker>,
    request: IncrementalAlterConfigsRequest,
) -> IncrementalAlterConfigsResponse {
    let mut responses = Vec::with_capacity(request.resources.len());
    for r in request.resources {
        let planned = refuse_broker_change(r.resource_type).and_then(|()| {
            let name = r.resource_name.as_str();
            let topic = broker.topic(name).ok_or_else(|| {
                ApiError::new(
                    ResponseError::UnknownTopicOrPartition,
                    format!("topic {name:?} does not exist"),
                )
            })?;
            let mut overrides = topic.overrides.clone();
            for c in &r.configs {
                apply_op(
                    &mut overrides,
                    c.name.as_str(),
                    c.config_operation,
                    c.value.as_ref().map(|v| v.as_str()),
                )?;
            }
            Ok(overrides)
        });
        let (code, message) =
            set_overrides(broker, &r.resource_name, planned, request.validate_only).await;
        responses.push(
            incremental_alter_configs_response::AlterConfigsResourceResponse::default()
                .with_resource_type(r.resource_type)
                .with_resource_name(r.resource_name)
                .with_error_code(code)
                .with_error_message(message),
        );
    }
    IncrementalAlterConfigsResponse::default().with_responses(responses)
}

/// Sets a topic's planned overrides; the error code and message of the outcome (0, none: done).
async fn set_overrides(
    broker: &Broker,
    name: &str,
    planned: Result<BTreeMap<String, String>, ApiError>,
    validate_only: bool,
) -> (i16, Option<kafka_protocol::protocol::StrBytes>) {
    let outcome = match planned {
        Ok(overrides) => broker.set_overrides(name, overrides, validate_only).await,
        Err(e) => Err(e),
    };
    match outcome {
        Ok(()) => (0, None),
        Err(e) => (e.code(), Some(str_bytes(e.message))),
    }
}

/// One IncrementalAlterConfigs operation: 0 SET, 1 DELETE, 2 APPEND, 3 SUBTRACT (list configs).
fn apply_op(
    overrides: &mut BTreeMap<String, String>,
    name: &str,
    op: i8,
    value: Option<&str>,
) -> Result<(), ApiError> {
    let invalid = |m: String| ApiError::new(ResponseError::InvalidConfig, m);
    let is_list = name == "cleanup.policy";
    match op {
        0 => {
            let v = value.ok_or_else(|| invalid(format!("SET of {name} needs a value")))?;
            overrides.insert(name.to_string(), v.to_string());
        }
        1 => {
            overrides.remove(name);
        }
        2 | 3 if is_list => {
            let v =
                value.ok_or_else(|| invalid(format!("APPEND/SUBTRACT of {name} needs a value")))?;
            let current = overrides
                .get(name)
                .cloned()
                .unwrap_or_else(|| "delete".into());
            let mut items: Vec<String> = current
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect();
            for item in v.split(',').map(str::trim) {
                if op == 2 && !items.iter().any(|i| i == item) {
                    items.push(item.to_string());
                } else if op == 3 {
                    items.retain(|i| i != item);
                }
            }
            overrides.insert(name.to_string(), items.join(","));
        }
        2 | 3 => {
            return Err(invalid(format!(
                "{name} is not a list config: APPEND and SUBTRACT do not apply"
            )))
        }
        other => {
            return Err(ApiError::new(
                ResponseError::InvalidRequest,
                format!("unknown config operation {other}"),
            ))
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incremental_ops() {
        let mut o = BTreeMap::new();
        apply_op(&mut o, "retention.ms", 0, Some("5")).unwrap();
        assert_eq!(o["retention.ms"], "5");
        apply_op(&mut o, "retention.ms", 1, None).unwrap();
        assert!(o.is_empty());
        assert!(apply_op(&mut o, "retention.ms", 2, Some("5")).is_err());
        apply_op(&mut o, "cleanup.policy", 2, Some("compact")).unwrap();
        assert_eq!(o["cleanup.policy"], "delete,compact");
        apply_op(&mut o, "cleanup.policy", 3, Some("compact")).unwrap();
        assert_eq!(o["cleanup.policy"], "delete");
        assert!(apply_op(&mut o, "x", 9, None).is_err());
    }
}
