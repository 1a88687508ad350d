"""PySpark Structured Streaming: count of status-500 lines per path over a directory of text files.

    python spark_job.py SRC_DIR DEST CHECKPOINT_DIR

The filter and the split run in the JVM (Column expressions, no Python UDF). ``trigger(availableNow)``
reads what is there and stops; the complete-mode result of the last batch is written to DEST as one
JSON [path, count] line per path. Two shuffle partitions and 16 MB input splits fit the two cores
(the defaults, 200 partitions and 128 MB, leave one core idle and pay for 200 state stores).
"""

import json
import sys
import time

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F


def main(src_dir: str, dest: str, checkpoint: str) -> None:
    spark = (SparkSession.builder.master("local[2]").appName("bench-streaming")
             .config("spark.sql.shuffle.partitions", "2")
             .config("spark.sql.files.maxPartitionBytes", str(16 * 2**20))
             .config("spark.ui.enabled", "false")
             .getOrCreate())
    spark.sparkContext.setLogLevel("WARN")
    lines = spark.readStream.format("text").load(src_dir)
    fields = F.split(lines.value, ",")
    counts = (lines.where(fields.getItem(4) == "500").select(fields.getItem(3).alias("path"))
              .groupBy("path").count())

    def write(batch: DataFrame, _batch_id: int) -> None:
        rows = batch.collect()
        with open(dest, "w", encoding="utf-8") as out:
            for row in rows:
                out.write(json.dumps([row["path"], row["count"]]) + "\n")

    t0 = time.perf_counter()
    query = (counts.writeStream.outputMode("complete").foreachBatch(write)
             .option("checkpointLocation", checkpoint).trigger(availableNow=True).start())
    query.awaitTermination()
    print(f"BENCH query_seconds={time.perf_counter() - t0:.3f}", flush=True)
    spark.stop()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3])
