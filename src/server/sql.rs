//! `POST /v1/sql`: the body is the query text (or `{"sql": "…"}` with `Content-Type:
//! application/json`); the answer is JSON lines, or an Arrow IPC stream when `Accept` names
//! `application/vnd.apache.arrow.stream` (formats in `query/output.rs`).
//!
//! The status waits for the first row: an error before it (bad SQL, an unknown table, a
//! partition led elsewhere, a corrupt file in the first batch, the timeout) is 400 with
//! `{"error": …}`; after it the answer is 200 and a failure is its last line. More than
//! `strata.sql.max.concurrent` queries at once: 429. A client that goes away cancels its query.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::sync::mpsc;

use crate::query::output::{self, IpcStream, ARROW_STREAM, JSON_LINES};
use crate::query::{Event, QueryEngine, StartError};

/// Largest query text taken.
pub const MAX_BODY_BYTES: usize = 1 << 20;

fn refuse(status: StatusCode, message: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, JSON_LINES)],
        output::error_line(message),
    )
        .into_response()
}

/// The query text of a request body.
fn query_text(json: bool, body: &[u8]) -> Result<String, String> {
    if json {
        #[derive(serde::Deserialize)]
        struct Body {
            sql: String,
        }
        let parsed: Body = serde_json::from_slice(body)
            .map_err(|e| format!("the body is not {{\"sql\": \"...\"}}: {e}"))?;
        return Ok(parsed.sql);
    }
    String::from_utf8(body.to_vec()).map_err(|_| "the query text is not UTF-8".to_string())
}

/// A header value of visible ASCII: the column names as a JSON array, non-ASCII escaped.
fn columns_header(schema: &datafusion::arrow::datatypes::Schema) -> Option<HeaderValue> {
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    let json = serde_json::to_string(&names).ok()?;
    let mut ascii = String::with_capacity(json.len());
    for c in json.chars() {
        if c.is_ascii_graphic() || c == ' ' {
            ascii.push(c);
        } else {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                ascii.push_str(&format!("\\u{u:04x}"));
            }
        }
    }
    HeaderValue::from_str(&ascii).ok()
}

pub async fn handle(engine: Result<Arc<QueryEngine>, String>, request: Request) -> Response {
    let engine = match engine {
        Ok(engine) => engine,
        Err(why) => return refuse(StatusCode::SERVICE_UNAVAILABLE, &why),
    };
    let headers = request.headers().clone();
    let arrow = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains(ARROW_STREAM));
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let body = match axum::body::to_bytes(request.into_body(), MAX_BODY_BYTES).await {
        Ok(body) => body,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, &format!("reading the body: {e}")),
    };
    let sql = match query_text(json, &body) {
        Ok(sql) if !sql.trim().is_empty() => sql,
        Ok(_) => return refuse(StatusCode::BAD_REQUEST, "the query is empty"),
        Err(why) => return refuse(StatusCode::BAD_REQUEST, &why),
    };
    let mut events = match engine.start(sql) {
        Ok(events) => events,
        Err(e @ StartError::Busy(_)) => {
            return refuse(StatusCode::TOO_MANY_REQUESTS, &e.to_string());
        }
    };
    // Wait for the first row (or the end) before choosing the status.
    let mut schema = None;
    let mut first = Vec::new();
    loop {
        match events.recv().await {
            Some(Event::Schema(s)) => schema = Some(s),
            Some(Event::Batch(b)) if b.num_rows() == 0 => {}
            Some(Event::Failed(why)) => {
                // Answered once the query has given its permit back (the channel closes), so
                // the client's next query is not refused as one too many.
                while events.recv().await.is_some() {}
                return refuse(StatusCode::BAD_REQUEST, &why);
            }
            Some(event) => {
                first.push(event);
                break;
            }
            None => break,
        }
    }
    let Some(schema) = schema else {
        return refuse(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the query ended without a schema",
        );
    };
    let content_type = if arrow { ARROW_STREAM } else { JSON_LINES };
    let mut response = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, content_type)
        .header("x-strata-max-rows", engine.limits().max_rows.to_string());
    if let Some(columns) = columns_header(&schema) {
        response = response.header("x-strata-columns", columns);
    }
    let encoder = if arrow {
        match IpcStream::start(&schema) {
            Ok((ipc, head)) => Encoder::Arrow(Some(Box::new(ipc)), Some(head)),
            Err(e) => return refuse(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        }
    } else {
        Encoder::Json
    };
    let state = BodyState {
        first: first.into(),
        events,
        encoder,
        done: false,
    };
    let stream = futures::stream::unfold(state, |mut state| async move {
        let chunk = state.next().await?;
        Some((chunk, state))
    });
    response
        .body(Body::from_stream(stream))
        .unwrap_or_else(|e| refuse(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()))
}

enum Encoder {
    Json,
    /// The writer, and the schema's bytes not sent yet.
    Arrow(Option<Box<IpcStream>>, Option<Vec<u8>>),
}

struct BodyState {
    first: std::collections::VecDeque<Event>,
    events: mpsc::Receiver<Event>,
    encoder: Encoder,
    done: bool,
}

type Chunk = Result<Bytes, std::io::Error>;

impl BodyState {
    /// The next piece of the body; `None` at its end.
    async fn next(&mut self) -> Option<Chunk> {
        loop {
            if self.done {
                return None;
            }
            if let Encoder::Arrow(_, head) = &mut self.encoder {
                if let Some(head) = head.take() {
                    return Some(Ok(head.into()));
                }
            }
            let event = match self.first.pop_front() {
                Some(event) => Some(event),
                None => self.events.recv().await,
            };
            let chunk = self.encode(event);
            if self.done {
                // The last chunk goes out once the query has given its permit back.
                while self.events.recv().await.is_some() {}
            }
            match chunk {
                Some(Ok(bytes)) if bytes.is_empty() => continue,
                other => return other,
            }
        }
    }

    fn encode(&mut self, event: Option<Event>) -> Option<Chunk> {
        let failed = |why: String| std::io::Error::other(why);
        match (&mut self.encoder, event) {
            (_, Some(Event::Schema(_))) => Some(Ok(Bytes::new())),
            (Encoder::Json, Some(Event::Batch(b))) => {
                let mut out = Vec::new();
                match output::json_lines(&b, &mut out) {
                    Ok(()) => Some(Ok(out.into())),
                    Err(e) => {
                        self.done = true;
                        Some(Ok(output::error_line(&e.to_string()).into()))
                    }
                }
            }
            (Encoder::Json, Some(Event::Truncated)) => {
                self.done = true;
                Some(Ok(output::truncated_line().into()))
            }
            (Encoder::Json, Some(Event::Failed(why))) => {
                self.done = true;
                Some(Ok(output::error_line(&why).into()))
            }
            (Encoder::Json, None) => None,
            (Encoder::Arrow(ipc, _), Some(Event::Batch(b))) => {
                let ipc = ipc.as_mut()?;
                Some(
                    ipc.batch(&b)
                        .map(Bytes::from)
                        .map_err(|e| failed(e.to_string())),
                )
            }
            (Encoder::Arrow(ipc, _), Some(Event::Truncated) | None) => {
                self.done = true;
                let ipc = ipc.take()?;
                Some(
                    ipc.finish()
                        .map(Bytes::from)
                        .map_err(|e| failed(e.to_string())),
                )
            }
            (Encoder::Arrow(..), Some(Event::Failed(why))) => {
                // No end-of-stream marker: the reader sees a cut stream, not a short answer.
                self.done = true;
                tracing::warn!(error = why, "SQL query failed after its first row");
                Some(Err(failed(why)))
            }
        }
    }
}
