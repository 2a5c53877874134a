"""The local development stack, apart from the pipeline runtime: the embedded Kafka and MinIO
(``stack``), the data generator and its ledger (``generator``) and ``lakehouse demo`` (``demo``).

Nothing under bronze/, silver/, gold/, data_quality/ or common/ imports this package at module
level (``tests/test_layout.py`` proves it): a production ``spark-submit`` of a stage needs only the
runtime. The ``lakehouse`` commands that drive the local stack import it when they run.
"""
