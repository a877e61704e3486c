"""Reads a topic's offloaded Parquet files with another engine, straight from a file:// bucket
(a directory scan of the Hive layout, `*.parquet` only), and prints one JSON object per
partition: records, bytes of values, first and last offset, headers.

    sql_interop.py duckdb|spark OBJECTS_DIR TOPIC
    sql_interop.py pyarrow-s3 http://HOST:PORT/BUCKET/PREFIX TOPIC

A directory scan sees what the manifests do not (orphans, replaced files within their delay,
rows below the log start inside the first file): the caller makes sure there are none.
"""

import json
import os
import sys


def duckdb_rows(root, topic):
    import duckdb

    con = duckdb.connect()
    con.execute("SET threads TO 1")
    glob = os.path.join(root, f"topic={topic}", "*", "*.parquet")
    return con.execute(
        f"""
        SELECT partition, count(*), sum(octet_length(value)), min("offset"), max("offset"),
               sum(len(headers))
        FROM read_parquet('{glob}', hive_partitioning = true)
        GROUP BY partition ORDER BY partition
        """
    ).fetchall()


def spark_rows(root, topic):
    from pyspark.sql import SparkSession

    spark = (
        SparkSession.builder.master("local[1]")
        .appName("strata-interop")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "1")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    df = (
        spark.read.option("pathGlobFilter", "*.parquet")
        .option("basePath", os.path.join(root, f"topic={topic}"))
        .parquet(os.path.join(root, f"topic={topic}"))
    )
    df.createOrReplaceTempView("t")
    rows = spark.sql(
        """
        SELECT partition, count(*), sum(length(value)), min(`offset`), max(`offset`),
               sum(size(headers))
        FROM t GROUP BY partition ORDER BY partition
        """
    ).collect()
    spark.stop()
    return [tuple(r) for r in rows]


def pyarrow_s3_rows(root, topic):
    """`root` is ENDPOINT/BUCKET/PREFIX (moto's S3 in the test): pyarrow's own S3 client
    lists the Hive layout and reads every `*.parquet` under the topic."""
    import pyarrow.compute as pc
    import pyarrow.dataset as ds
    import pyarrow.fs as pafs

    endpoint, path = root.split("/", 3)[2], root.split("/", 3)[3]
    s3 = pafs.S3FileSystem(
        endpoint_override=endpoint,
        scheme="http",
        access_key=os.environ.get("AWS_ACCESS_KEY_ID", "test"),
        secret_key=os.environ.get("AWS_SECRET_ACCESS_KEY", "test"),
        region=os.environ.get("AWS_REGION", "us-east-1"),
    )
    base = f"{path}/topic={topic}"
    files = [
        f.path
        for f in s3.get_file_info(pafs.FileSelector(base, recursive=True))
        if f.path.endswith(".parquet")
    ]
    data = ds.dataset(
        files, filesystem=s3, format="parquet", partitioning="hive", partition_base_dir=base
    ).to_table()
    out = []
    for p in sorted(set(data.column("partition").to_pylist())):
        t = data.filter(pc.field("partition") == p)
        lengths = pc.binary_length(t.column("value"))
        headers = pc.list_value_length(t.column("headers"))
        out.append(
            (
                p,
                t.num_rows,
                pc.sum(lengths).as_py(),
                pc.min(t.column("offset")).as_py(),
                pc.max(t.column("offset")).as_py(),
                pc.sum(headers).as_py(),
            )
        )
    return out


def main():
    engine, root, topic = sys.argv[1:4]
    rows = {"duckdb": duckdb_rows, "spark": spark_rows, "pyarrow-s3": pyarrow_s3_rows}[engine](
        root, topic
    )
    for p, n, size, lo, hi, headers in rows:
        print(
            json.dumps(
                {
                    "partition": int(p),
                    "n": int(n),
                    "bytes": int(size or 0),
                    "lo": int(lo),
                    "hi": int(hi),
                    "headers": int(headers or 0),
                }
            )
        )


if __name__ == "__main__":
    main()
