# Image for the Spark master/worker and the stage services of docker-compose.yml.
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends openjdk-17-jre-headless maven \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/lakehouse
COPY . .
RUN pip install --no-cache-dir -e . && lakehouse setup jars
ENV SPARK_CONF_DIR=/opt/lakehouse/.cache/spark-conf \
    PYSPARK_PYTHON=python3
ENV PATH="/usr/local/lib/python3.11/site-packages/pyspark/bin:${PATH}"
