//! `length` and `octet_length` of the Binary columns (`key`, `value`, header values): their
//! byte count. DataFusion's own functions take strings only and coerce Binary to Utf8 first,
//! which fails the query on bytes that are not UTF-8; these wrappers answer Binary themselves
//! (Int64, NULL for NULL) and hand every other argument to the built-in function unchanged.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, Int64Array};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{Result, ScalarValue};
use datafusion::execution::FunctionRegistry;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

/// Replaces `length` and `octet_length` with their Binary-aware wrappers.
pub fn register(registry: &mut dyn FunctionRegistry) -> Result<()> {
    for name in ["length", "octet_length"] {
        let inner = registry.udf(name)?;
        registry.register_udf(Arc::new(ScalarUDF::new_from_impl(ByteLength {
            inner,
            signature: Signature::any(1, Volatility::Immutable),
        })))?;
    }
    Ok(())
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct ByteLength {
    inner: Arc<ScalarUDF>,
    signature: Signature,
}

fn is_binary(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView
    )
}

impl ScalarUDFImpl for ByteLength {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    /// `length` is an alias of `character_length`: the wrapper must take the alias over too.
    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        match arg_types.first() {
            Some(t) if is_binary(t) => Ok(DataType::Int64),
            _ => self.inner.return_type(arg_types),
        }
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let binary = args
            .arg_fields
            .first()
            .is_some_and(|f| is_binary(f.data_type()));
        if !binary {
            return self.inner.invoke_with_args(args);
        }
        Ok(match &args.args[0] {
            ColumnarValue::Array(a) => ColumnarValue::Array(lengths(a)),
            ColumnarValue::Scalar(
                ScalarValue::Binary(b) | ScalarValue::LargeBinary(b) | ScalarValue::BinaryView(b),
            ) => ColumnarValue::Scalar(ScalarValue::Int64(b.as_ref().map(|b| b.len() as i64))),
            ColumnarValue::Scalar(_) => ColumnarValue::Scalar(ScalarValue::Int64(None)),
        })
    }
}

fn lengths(a: &ArrayRef) -> ArrayRef {
    let out: Int64Array = match a.data_type() {
        DataType::LargeBinary => a
            .as_binary::<i64>()
            .iter()
            .map(|v| v.map(|v| v.len() as i64))
            .collect(),
        DataType::BinaryView => a
            .as_binary_view()
            .iter()
            .map(|v| v.map(|v| v.len() as i64))
            .collect(),
        _ => a
            .as_binary::<i32>()
            .iter()
            .map(|v| v.map(|v| v.len() as i64))
            .collect(),
    };
    Arc::new(out)
}
