"""Reads what strata offloaded the way an analyst would, with pyarrow, and prints one JSON object
per row, sorted by (topic, partition, offset).

    read_parquet.py OBJECTS_DIR MANIFEST...   reads exactly the files the given manifests list
    read_parquet.py OBJECTS_DIR --scan TOPIC  scans the topic's directory (orphans included)

OBJECTS_DIR is the root of a file:// object store; a MANIFEST is a path relative to it (the
newest manifest of a partition). `topic` and `partition` come from the Hive-style directory
names (topic=.../partition=...), not from the files. Binary columns are printed as hex, nulls
as null, the timestamp as milliseconds since the epoch.
"""

import argparse
import json
import os

import pyarrow as pa
import pyarrow.dataset as ds


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("objects")
    parser.add_argument("manifests", nargs="*")
    parser.add_argument("--scan", metavar="TOPIC")
    args = parser.parse_args()

    if args.scan:
        # Directory discovery skips names starting with "_" or ".", so _strata/ is not read.
        dataset = ds.dataset(
            os.path.join(args.objects, f"topic={args.scan}"),
            format="parquet",
            partitioning="hive",
        )
        topic = args.scan
    else:
        paths = []
        for manifest in args.manifests:
            with open(os.path.join(args.objects, manifest)) as f:
                paths += [os.path.join(args.objects, x["path"]) for x in json.load(f)["files"]]
        dataset = ds.dataset(
            paths, format="parquet", partitioning="hive", partition_base_dir=args.objects
        )
        topic = None

    table = dataset.to_table()
    table = table.set_column(
        table.schema.get_field_index("timestamp"),
        "timestamp",
        table["timestamp"].cast(pa.int64()),
    )
    hexed = lambda b: None if b is None else b.hex()
    rows = []
    for row in table.to_pylist():
        rows.append(
            {
                "topic": row.get("topic", topic),
                "partition": int(row["partition"]),
                "offset": row["offset"],
                "timestamp": row["timestamp"],
                "key": hexed(row["key"]),
                "value": hexed(row["value"]),
                "headers": [[h["key"], hexed(h["value"])] for h in row["headers"]],
            }
        )
    rows.sort(key=lambda r: (r["topic"], r["partition"], r["offset"]))
    for r in rows:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
