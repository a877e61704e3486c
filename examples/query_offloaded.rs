//! Query a topic's offloaded Parquet files straight from the bucket with DataFusion: no broker,
//! no strata code, only the Hive layout `topic={topic}/partition={p}/*.parquet`.
//!
//! ```sh
//! cargo run --example query_offloaded -- /abs/path/strata-data/objects orders \
//!     'SELECT partition, count(*) AS n, max("offset") AS last FROM t GROUP BY partition'
//! ```
//!
//! A directory scan sees what the manifests do not: orphans younger than
//! `remote.orphan.grace.ms`, and rows below the log start inside the first file (DeleteRecords,
//! retention). Only `*.parquet` is listed, so object_store's `NAME#N` staging files of uploads
//! in flight are left out. `strata sql --object-store URL` reads exactly what the manifests list.

use std::sync::Arc;

use datafusion::arrow::datatypes::DataType;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::error::Result;
use datafusion::prelude::SessionContext;

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(objects), Some(topic)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: query_offloaded OBJECTS_DIR TOPIC [SQL over table t]");
        std::process::exit(2);
    };
    let query = args.get(3).map_or(
        "SELECT partition, count(*) AS n FROM t GROUP BY partition",
        |q| q.as_str(),
    );
    let ctx = SessionContext::new();
    let url = ListingTableUrl::parse(format!("file://{objects}/topic={topic}/"))?;
    let options = ListingOptions::new(Arc::new(ParquetFormat::default()))
        .with_file_extension(".parquet")
        .with_table_partition_cols(vec![("partition".to_string(), DataType::Int32)]);
    let config = ListingTableConfig::new(url)
        .with_listing_options(options)
        .infer_schema(&ctx.state())
        .await?;
    ctx.register_table("t", Arc::new(ListingTable::try_new(config)?))?;
    ctx.sql(query).await?.show().await
}
