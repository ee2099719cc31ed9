"""Prints the master that tfos.cli.spark_session chose (run under spark-submit by a test)."""
import tfos

args = tfos.cli.argument_parser().parse_args([])
spark = tfos.cli.spark_session(args, app_name="tfos-master-check")
print("MASTER", spark.sparkContext.master)
spark.stop()
