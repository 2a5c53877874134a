"""Hadoop's file systems through the Spark session's JVM: the small files of the checkpoints,
the Delta logs' commit files and the stages' own notes, read and written the same way on S3 and
on a local disk."""

from __future__ import annotations

import json


class Fs:
    """Small files through Hadoop's FileSystem API of the Spark session (s3a:// and file:// alike):
    read, write, list, move and delete one small file."""

    def __init__(self, spark):
        self.sc = spark.sparkContext

    def _path(self, path: str):
        p = self.sc._jvm.org.apache.hadoop.fs.Path(path)
        return p, p.getFileSystem(self.sc._jsc.hadoopConfiguration())

    def read_text(self, path: str) -> str | None:
        p, fs = self._path(path)
        if not fs.exists(p):
            return None
        stream = fs.open(p)
        try:
            return self.sc._jvm.org.apache.commons.io.IOUtils.toString(stream, "UTF-8")
        finally:
            stream.close()

    def read_json(self, path: str) -> dict | None:
        data = self.read_text(path)
        if data is None:
            return None
        try:
            return json.loads(data)
        except ValueError:
            return None

    def write_json(self, path: str, value: dict) -> None:
        p, fs = self._path(path)
        out = fs.create(p, True)
        try:
            out.write(json.dumps(value, sort_keys=True).encode())
        finally:
            out.close()

    def delete(self, path: str, recursive: bool = False) -> bool:
        p, fs = self._path(path)
        return bool(fs.delete(p, recursive))

    def move(self, path: str, target: str) -> bool:
        """Rename a folder (on S3: a copy of each object, then a delete); False when absent."""
        p, fs = self._path(path)
        if not fs.exists(p):
            return False
        if not fs.rename(p, self._path(target)[0]):  # Hadoop says False (target exists, ...) without raising
            raise OSError(f"rename to {target} refused")
        return True

    def list_names(self, path: str) -> list[str]:
        p, fs = self._path(path)
        return [st.getPath().getName() for st in fs.listStatus(p)] if fs.exists(p) else []

    def has_children(self, path: str) -> bool:
        p, fs = self._path(path)
        return bool(fs.exists(p)) and len(fs.listStatus(p)) > 0
