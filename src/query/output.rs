//! Query results on the wire.
//!
//! JSON lines (`application/x-ndjson`, the default): one object per row, keys in column order,
//! values as JSON: numbers, strings, booleans, null; Binary (keys, values, header values) as
//! standard base64; lists as arrays, structs as objects; timestamps and everything else as
//! their Arrow display text (`2024-05-01T12:00:00.123Z`). The last line may instead be
//! `{"truncated":true}` (`strata.sql.max.rows` reached) or `{"error":"…"}` (the query failed
//! after its first row).
//!
//! Arrow IPC stream (`application/vnd.apache.arrow.stream`): the schema, then the batches. An
//! error after the first row ends the body without the end-of-stream marker (a reader sees a
//! truncated stream and fails); a truncated result ends normally after `X-Strata-Max-Rows`
//! rows.

use base64::Engine;
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, BinaryViewArray, BooleanArray, FixedSizeBinaryArray,
    LargeBinaryArray, ListArray, StructArray,
};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::ipc::writer::StreamWriter;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use serde_json::{Map, Number, Value};

pub const JSON_LINES: &str = "application/x-ndjson";
pub const ARROW_STREAM: &str = "application/vnd.apache.arrow.stream";

fn base64(bytes: &[u8]) -> Value {
    Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
}

fn number(n: Option<Number>) -> Value {
    n.map_or(Value::Null, Value::Number)
}

/// The JSON value of row `i` of `array`.
fn value(array: &ArrayRef, i: usize) -> Result<Value, ArrowError> {
    use datafusion::arrow::datatypes as t;
    if array.is_null(i) {
        return Ok(Value::Null);
    }
    Ok(match array.data_type() {
        DataType::Boolean => Value::Bool(
            array
                .as_any()
                .downcast_ref::<BooleanArray>()
                .map(|a| a.value(i))
                .unwrap_or_default(),
        ),
        DataType::Int8 => Value::from(array.as_primitive::<t::Int8Type>().value(i)),
        DataType::Int16 => Value::from(array.as_primitive::<t::Int16Type>().value(i)),
        DataType::Int32 => Value::from(array.as_primitive::<t::Int32Type>().value(i)),
        DataType::Int64 => Value::from(array.as_primitive::<t::Int64Type>().value(i)),
        DataType::UInt8 => Value::from(array.as_primitive::<t::UInt8Type>().value(i)),
        DataType::UInt16 => Value::from(array.as_primitive::<t::UInt16Type>().value(i)),
        DataType::UInt32 => Value::from(array.as_primitive::<t::UInt32Type>().value(i)),
        DataType::UInt64 => Value::from(array.as_primitive::<t::UInt64Type>().value(i)),
        DataType::Float32 => number(Number::from_f64(f64::from(
            array.as_primitive::<t::Float32Type>().value(i),
        ))),
        DataType::Float64 => number(Number::from_f64(
            array.as_primitive::<t::Float64Type>().value(i),
        )),
        DataType::Utf8 => Value::from(array.as_string::<i32>().value(i)),
        DataType::LargeUtf8 => Value::from(array.as_string::<i64>().value(i)),
        DataType::Utf8View => Value::from(array.as_string_view().value(i)),
        DataType::Binary => base64(
            array
                .as_any()
                .downcast_ref::<BinaryArray>()
                .map_or(&[][..], |a| a.value(i)),
        ),
        DataType::LargeBinary => base64(
            array
                .as_any()
                .downcast_ref::<LargeBinaryArray>()
                .map_or(&[][..], |a| a.value(i)),
        ),
        DataType::BinaryView => base64(
            array
                .as_any()
                .downcast_ref::<BinaryViewArray>()
                .map_or(&[][..], |a| a.value(i)),
        ),
        DataType::FixedSizeBinary(_) => base64(
            array
                .as_any()
                .downcast_ref::<FixedSizeBinaryArray>()
                .map_or(&[][..], |a| a.value(i)),
        ),
        DataType::List(_) => {
            let list = array
                .as_any()
                .downcast_ref::<ListArray>()
                .ok_or_else(|| ArrowError::CastError("list".into()))?;
            let items = list.value(i);
            Value::Array(
                (0..items.len())
                    .map(|j| value(&items, j))
                    .collect::<Result<_, _>>()?,
            )
        }
        DataType::Struct(fields) => {
            let s = array
                .as_any()
                .downcast_ref::<StructArray>()
                .ok_or_else(|| ArrowError::CastError("struct".into()))?;
            let mut object = Map::new();
            for (f, column) in fields.iter().zip(s.columns()) {
                object.insert(f.name().clone(), value(column, i)?);
            }
            Value::Object(object)
        }
        _ => {
            let formatter = ArrayFormatter::try_new(array.as_ref(), &FormatOptions::default())?;
            Value::String(formatter.value(i).to_string())
        }
    })
}

/// `batch` as JSON lines, appended to `out`.
pub fn json_lines(batch: &RecordBatch, out: &mut Vec<u8>) -> Result<(), ArrowError> {
    // Written by hand: serde_json's map sorts keys, and columns keep the query's order.
    let schema = batch.schema();
    let names: Vec<String> = schema
        .fields()
        .iter()
        .map(|f| Value::from(f.name().as_str()).to_string())
        .collect();
    for i in 0..batch.num_rows() {
        out.push(b'{');
        for (c, (name, column)) in names.iter().zip(batch.columns()).enumerate() {
            if c > 0 {
                out.push(b',');
            }
            out.extend_from_slice(name.as_bytes());
            out.push(b':');
            out.extend_from_slice(value(column, i)?.to_string().as_bytes());
        }
        out.extend_from_slice(b"}\n");
    }
    Ok(())
}

/// The last line of a truncated answer.
pub fn truncated_line() -> Vec<u8> {
    b"{\"truncated\":true}\n".to_vec()
}

/// The last line of a failed answer, or the body of a 400.
pub fn error_line(message: &str) -> Vec<u8> {
    let mut line = serde_json::json!({ "error": message })
        .to_string()
        .into_bytes();
    line.push(b'\n');
    line
}

/// An Arrow IPC stream written piece by piece: each call returns the bytes to send.
pub struct IpcStream {
    writer: StreamWriter<Vec<u8>>,
}

impl IpcStream {
    /// The stream's start: its schema.
    pub fn start(schema: &SchemaRef) -> Result<(IpcStream, Vec<u8>), ArrowError> {
        let mut writer = StreamWriter::try_new(Vec::new(), schema)?;
        let head = std::mem::take(writer.get_mut());
        Ok((IpcStream { writer }, head))
    }

    pub fn batch(&mut self, batch: &RecordBatch) -> Result<Vec<u8>, ArrowError> {
        self.writer.write(batch)?;
        Ok(std::mem::take(self.writer.get_mut()))
    }

    /// The end-of-stream marker.
    pub fn finish(mut self) -> Result<Vec<u8>, ArrowError> {
        self.writer.finish()?;
        Ok(std::mem::take(self.writer.get_mut()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use datafusion::arrow::array::{Int64Array, StringArray};
    use datafusion::arrow::datatypes::{Field, Schema};

    #[test]
    fn rows_become_objects_in_column_order() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("z", DataType::Int64, true),
            Field::new("a", DataType::Utf8, true),
            Field::new("v", DataType::Binary, true),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from(vec![Some(1), None])),
                Arc::new(StringArray::from(vec![Some("x"), Some("y")])),
                Arc::new(BinaryArray::from_opt_vec(vec![Some(b"\xff\x00"), None])),
            ],
        )
        .unwrap();
        let mut out = Vec::new();
        json_lines(&batch, &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"z\":1,\"a\":\"x\",\"v\":\"/wA=\"}\n{\"z\":null,\"a\":\"y\",\"v\":null}\n"
        );
        assert_eq!(
            error_line("bad \"x\""),
            b"{\"error\":\"bad \\\"x\\\"\"}\n".to_vec()
        );

        let (mut ipc, mut bytes) = IpcStream::start(&schema).unwrap();
        bytes.extend(ipc.batch(&batch).unwrap());
        bytes.extend(ipc.finish().unwrap());
        let reader = datafusion::arrow::ipc::reader::StreamReader::try_new(
            std::io::Cursor::new(bytes),
            None,
        )
        .unwrap();
        let read: Vec<RecordBatch> = reader.collect::<Result<_, _>>().unwrap();
        assert_eq!(read, vec![batch]);
    }
}
