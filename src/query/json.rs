//! JSON functions: those of `datafusion-functions-json` (`json_get_str`, `json_get_int`,
//! `json_get_float`, `json_get`, `json_contains`, `json_length`, ... and the `->`, `->>`
//! operators), with the crate's names and semantics: NULL when the path is absent or the text is
//! not JSON. Kafka values and keys are bytes (Binary), which the crate does not take; so the
//! functions that read a JSON document are registered again here, wrapped to accept Binary too:
//! bytes that are not UTF-8 are not JSON either (NULL), the rest are handed over unchanged.
//! (The operators keep the crate's own functions: `value->'a'` needs a string.)

use std::sync::Arc;

use datafusion::arrow::compute::{cast_with_options, CastOptions};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{Result, ScalarValue};
use datafusion::execution::FunctionRegistry;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion_functions_json::udfs;

/// Registers the crate's functions and operators, then the Binary-accepting wrappers over the
/// functions that take a JSON document first.
pub fn register(registry: &mut dyn FunctionRegistry) -> Result<()> {
    datafusion_functions_json::register_all(registry)?;
    let documents = [
        udfs::json_get_udf(),
        udfs::json_get_bool_udf(),
        udfs::json_get_float_udf(),
        udfs::json_get_int_udf(),
        udfs::json_get_json_udf(),
        udfs::json_get_array_udf(),
        udfs::json_get_str_udf(),
        udfs::json_as_text_udf(),
        udfs::json_contains_udf(),
        udfs::json_length_udf(),
        udfs::json_object_keys_udf(),
    ];
    for inner in documents {
        registry.register_udf(Arc::new(ScalarUDF::new_from_impl(BytesAsJson::new(inner))))?;
    }
    Ok(())
}

/// A JSON function that also takes its document as Binary.
#[derive(Debug, PartialEq, Eq, Hash)]
struct BytesAsJson {
    inner: Arc<ScalarUDF>,
    signature: Signature,
}

impl BytesAsJson {
    fn new(inner: Arc<ScalarUDF>) -> BytesAsJson {
        BytesAsJson {
            inner,
            signature: Signature::variadic_any(Volatility::Immutable),
        }
    }
}

fn is_binary(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView
    )
}

/// Binary as text: invalid UTF-8 becomes NULL.
fn as_text(value: ColumnarValue) -> Result<ColumnarValue> {
    Ok(match value {
        ColumnarValue::Array(a) if is_binary(a.data_type()) => {
            let options = CastOptions {
                safe: true,
                ..Default::default()
            };
            ColumnarValue::Array(cast_with_options(&a, &DataType::Utf8, &options)?)
        }
        ColumnarValue::Scalar(
            ScalarValue::Binary(b) | ScalarValue::LargeBinary(b) | ScalarValue::BinaryView(b),
        ) => ColumnarValue::Scalar(ScalarValue::Utf8(b.and_then(|b| String::from_utf8(b).ok()))),
        other => other,
    })
}

impl ScalarUDFImpl for BytesAsJson {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        let mut types = arg_types.to_vec();
        if let Some(first) = types.first_mut().filter(|t| is_binary(t)) {
            *first = DataType::Utf8;
        }
        self.inner.return_type(&types)
    }

    fn invoke_with_args(&self, mut args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let binary = args
            .arg_fields
            .first()
            .is_some_and(|f| is_binary(f.data_type()));
        if binary {
            let first = args.args.remove(0);
            args.args.insert(0, as_text(first)?);
            let field = args.arg_fields[0]
                .as_ref()
                .clone()
                .with_data_type(DataType::Utf8);
            args.arg_fields[0] = Arc::new(field);
        }
        self.inner.invoke_with_args(args)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Array, BinaryArray, Int64Array, StringArray};
    use datafusion::arrow::datatypes::Field;
    use datafusion::prelude::SessionContext;

    #[tokio::test]
    async fn json_from_bytes_text_and_garbage() {
        let mut ctx = SessionContext::new();
        register(&mut ctx).unwrap();
        let values = BinaryArray::from_opt_vec(vec![
            Some(br#"{"a": 7, "s": "x"}"#.as_slice()),
            Some(b"\xff\xfe not utf-8".as_slice()),
            Some(b"not json".as_slice()),
            None,
            Some(br#"{"b": 1}"#.as_slice()),
        ]);
        let batch = datafusion::arrow::array::RecordBatch::try_new(
            Arc::new(datafusion::arrow::datatypes::Schema::new(vec![Field::new(
                "value",
                DataType::Binary,
                true,
            )])),
            vec![Arc::new(values)],
        )
        .unwrap();
        ctx.register_batch("t", batch).unwrap();
        let out = ctx
            .sql("SELECT json_get_int(value, 'a') AS a, json_get_str(value, 's') AS s, json_get_str(CAST('{\"s\":\"t\"}' AS VARCHAR), 's') AS lit FROM t")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let b = &out[0];
        let a = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
        assert_eq!(
            a.iter().collect::<Vec<_>>(),
            vec![Some(7), None, None, None, None]
        );
        let s = b.column(1).as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!(s.value(0), "x");
        assert_eq!(s.null_count(), 4);
        let lit = b.column(2).as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!(lit.value(0), "t");
    }
}
