"""Serving: what reads the lake for its users, beside the pipeline - the catalog of table names
for Spark SQL, the SQL server and spark-sql shell, the Spark-free reader (delta-rs), trace,
status and the dashboard. The stages never import it."""
