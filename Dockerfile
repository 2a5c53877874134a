# Image for the Spark master/worker and the stage services of docker-compose.yml.
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends openjdk-17-jre-headless maven \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/lakehouse
COPY . .
# the jars in the image's own folder (not the build user's ~/.cache), at the path every node shares
ENV LAKEHOUSE_CACHE_DIR=/opt/lakehouse/.cache
RUN pip install --no-cache-dir -e . && lakehouse setup jars
ENV SPARK_CONF_DIR=/opt/lakehouse/.cache/spark-conf \
    PYSPARK_PYTHON=python3
ENV PATH="/usr/local/lib/python3.11/site-packages/pyspark/bin:${PATH}"
