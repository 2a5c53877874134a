"""Named exceptions for user errors: each carries one line saying what is wrong and what to do.

The CLI prints ``error: <message>`` and exits with the class's exit code; no Java stack trace.
"""

from __future__ import annotations


class LakehouseError(Exception):
    """Base class: a problem the user can fix, described in one line."""

    exit_code = 2


class SettingsError(LakehouseError):
    """A setting is missing or has a value that is not valid."""


class SetupError(LakehouseError):
    """Something the project installs (jars, MinIO binary, virtualenv) is missing."""


class StackError(LakehouseError):
    """The local stack (Kafka, MinIO) could not be started or reached."""


class UnreachableError(LakehouseError):
    """A configured service (Kafka, S3/MinIO) does not answer."""


class TopicNotFoundError(LakehouseError):
    """A Kafka topic the job needs does not exist."""


class StreamFailedError(LakehouseError):
    """A streaming query stopped with an error."""

    exit_code = 1


class SchemaDriftError(StreamFailedError):
    """A source's records changed shape and its setting says stop (LAKEHOUSE_SCHEMA_EVOLUTION_<KIND>=fail)."""


class CheckpointError(LakehouseError):
    """A checkpoint is in use by another copy of the query, or was built with other settings."""

    exit_code = 3
