//! `strata sql "<query>" [--admin host:port | --object-store URL] [--format table|csv|json]`.
//!
//! With `--admin` (the default, 127.0.0.1:9094) the query runs on that broker (POST /v1/sql):
//! every acked record, hot and cold. With `--object-store` it runs here, on the bucket alone:
//! each partition at its newest manifest in `_strata/manifests/`, cold rows only, exactly the
//! files that manifest lists. `json` prints the JSON lines as the broker sends them; `table` and
//! `csv` print the same values (binary as base64). A failed query exits non-zero.

use std::io::Write;
use std::sync::Arc;

use serde_json::Value;

use crate::query::output::{self, JSON_LINES};
use crate::query::{BucketSource, Event, QueryEngine, SqlLimits};

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Format {
    Table,
    Csv,
    Json,
}

#[derive(clap::Args, Debug)]
pub struct SqlArgs {
    /// The query; quote topic names holding `.`, `-` or capitals: `SELECT * FROM "orders.v1"`.
    pub query: String,
    /// A broker's admin HTTP address.
    #[arg(long, conflicts_with = "object_store")]
    pub admin: Option<String>,
    /// Query a bucket without a broker (file:///abs/path, s3://bucket/prefix): cold rows only.
    #[arg(long)]
    pub object_store: Option<String>,
    /// A setting of an s3:// `--object-store`, as for `strata serve`, e.g.
    /// `--object-store-option endpoint=http://127.0.0.1:9000` (over the `AWS_*` environment).
    #[arg(
        long = "object-store-option",
        value_name = "KEY=VALUE",
        requires = "object_store"
    )]
    pub object_store_options: Vec<String>,
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
}

/// The answer as JSON lines, its columns in order, and whether it ended in an error.
struct Answer {
    columns: Vec<String>,
    lines: Vec<String>,
}

pub async fn run(args: SqlArgs) -> anyhow::Result<()> {
    let answer = match &args.object_store {
        Some(url) => {
            let mut options = std::collections::BTreeMap::new();
            for item in &args.object_store_options {
                let (key, value) = item.split_once('=').ok_or_else(|| {
                    anyhow::anyhow!("--object-store-option expects KEY=VALUE, got {item:?}")
                })?;
                options.insert(key.trim().to_string(), value.trim().to_string());
            }
            offline(url, &options, &args.query).await?
        }
        None => {
            let admin = args.admin.as_deref().unwrap_or("127.0.0.1:9094");
            remote(admin, &args.query).await?
        }
    };
    print(&answer, args.format)
}

async fn remote(admin: &str, query: &str) -> anyhow::Result<Answer> {
    let url = format!("http://{admin}/v1/sql");
    let mut response = reqwest::Client::new()
        .post(&url)
        .header("accept", JSON_LINES)
        .header("content-type", "text/plain")
        .body(query.to_string())
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("{url}: {e}"))?;
    let status = response.status();
    let columns: Vec<String> = response
        .headers()
        .get("x-strata-columns")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| serde_json::from_str(v).ok())
        .unwrap_or_default();
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        body.extend_from_slice(&chunk);
    }
    let text = String::from_utf8_lossy(&body);
    if !status.is_success() {
        let why = serde_json::from_str::<Value>(text.trim())
            .ok()
            .and_then(|v| v.get("error")?.as_str().map(str::to_string))
            .unwrap_or_else(|| text.trim().to_string());
        anyhow::bail!("{why} (HTTP {status})");
    }
    Ok(Answer {
        columns,
        lines: text.lines().map(str::to_string).collect(),
    })
}

async fn offline(
    url: &str,
    options: &std::collections::BTreeMap<String, String>,
    query: &str,
) -> anyhow::Result<Answer> {
    let store = crate::store::Store::from_url_with_options(url, options)?;
    let source = BucketSource::open(store)
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
    let limits = SqlLimits::from_settings(&crate::config::BrokerSettings::default());
    let engine = QueryEngine::new(Arc::new(source), limits, None)?;
    let mut events = engine.start(query.to_string())?;
    let mut answer = Answer {
        columns: Vec::new(),
        lines: Vec::new(),
    };
    let mut rows = 0usize;
    while let Some(event) = events.recv().await {
        let mut bytes = Vec::new();
        match event {
            Event::Schema(s) => {
                answer.columns = s.fields().iter().map(|f| f.name().clone()).collect();
            }
            Event::Batch(b) => {
                rows += b.num_rows();
                output::json_lines(&b, &mut bytes)?;
            }
            Event::Truncated => bytes = output::truncated_line(),
            Event::Failed(why) if rows == 0 => anyhow::bail!(why),
            Event::Failed(why) => bytes = output::error_line(&why),
        }
        let text = String::from_utf8(bytes)?;
        answer.lines.extend(text.lines().map(str::to_string));
    }
    Ok(answer)
}

/// A cell of `table` or `csv`: strings as they are, NULL empty, anything else as JSON.
fn cell(value: Option<&Value>) -> String {
    match value {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn print(answer: &Answer, format: Format) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut ending = None;
    for line in &answer.lines {
        if let Format::Json = format {
            writeln!(out, "{line}")?;
        }
        let value: Value = serde_json::from_str(line)?;
        if answer.columns.iter().all(|c| c != "error") {
            if let Some(why) = value.get("error").and_then(Value::as_str) {
                ending = Some(Err(why.to_string()));
                continue;
            }
        }
        if value.get("truncated") == Some(&Value::Bool(true))
            && value.as_object().map(|o| o.len()) == Some(1)
        {
            ending = Some(Ok(
                "truncated: the answer has more rows than strata.sql.max.rows",
            ));
            continue;
        }
        rows.push(answer.columns.iter().map(|c| cell(value.get(c))).collect());
    }
    match format {
        Format::Json => {}
        Format::Csv => {
            let header: Vec<String> = answer.columns.iter().map(|c| csv_field(c)).collect();
            writeln!(out, "{}", header.join(","))?;
            for row in &rows {
                let fields: Vec<String> = row.iter().map(|c| csv_field(c)).collect();
                writeln!(out, "{}", fields.join(","))?;
            }
        }
        Format::Table => table(&mut out, &answer.columns, &rows)?,
    }
    out.flush()?;
    match ending {
        Some(Err(why)) => anyhow::bail!("the query failed after {} rows: {why}", rows.len()),
        Some(Ok(note)) => {
            eprintln!("{note}");
            Ok(())
        }
        None => Ok(()),
    }
}

fn table(out: &mut impl Write, columns: &[String], rows: &[Vec<String>]) -> std::io::Result<()> {
    let width = |i: usize| {
        rows.iter()
            .map(|r| r[i].chars().count())
            .chain([columns[i].chars().count()])
            .max()
            .unwrap_or(0)
    };
    let widths: Vec<usize> = (0..columns.len()).map(width).collect();
    let rule: String = widths
        .iter()
        .map(|w| format!("+{}", "-".repeat(w + 2)))
        .collect::<String>()
        + "+";
    let line = |cells: &[String]| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("| {c:<w$} "))
            .collect::<String>()
            + "|"
    };
    writeln!(out, "{rule}")?;
    writeln!(out, "{}", line(columns))?;
    writeln!(out, "{rule}")?;
    for row in rows {
        writeln!(out, "{}", line(row))?;
    }
    writeln!(out, "{rule}")
}
