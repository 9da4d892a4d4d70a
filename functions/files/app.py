"""Files: presigned uploads (one request or parts) and downloads, and every stored object checked, scanned and
thumbnailed when S3 announces it (the file-events queue); inbound messages' files fetched from their platforms
(jobs on the same queue)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.metrics import MetricUnit

from chat4all import bootstrap
from chat4all.api.access import caller
from chat4all.api.app import create_resolver, json_response, serve_or_consume
from chat4all.api.files import CreateFileRequest, file_view
from chat4all.api.requests import parse_body, resource_id
from chat4all.domain.files import FileStatus
from chat4all.domain.wire import MediaFetchJob
from chat4all.observability import log_context, logger, metrics, tracer

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
    from aws_lambda_powertools.utilities.typing import LambdaContext

settings = bootstrap.settings()
app = create_resolver()


@app.post("/v1/files")
def create_file() -> Response[str]:
    principal = caller(app)
    request = parse_body(app.current_event, CreateFileRequest, settings.max_body_bytes)
    record, upload = bootstrap.file_service().create(request.command(), principal)
    body = file_view(record) | {"upload": upload}
    return json_response(201, body, headers={"Location": f"/v1/files/{record.file_id}"})


@app.get("/v1/files/<file_id>")
def get_file(file_id: str) -> Response[str]:
    principal = caller(app)
    links = bootstrap.file_service().get(resource_id(file_id, "file"), principal)
    return json_response(200, file_view(links.record, links))


@app.get("/v1/files/<file_id>/parts")
def list_parts(file_id: str) -> Response[str]:
    principal = caller(app)
    return json_response(200, bootstrap.file_service().parts(resource_id(file_id, "file"), principal))


@app.post("/v1/files/<file_id>/complete")
def complete_file(file_id: str) -> Response[str]:
    principal = caller(app)
    record = bootstrap.file_service().complete(resource_id(file_id, "file"), principal)
    return json_response(200, file_view(record))


@app.delete("/v1/files/<file_id>")
def delete_file(file_id: str) -> Response[str]:
    principal = caller(app)
    bootstrap.file_service().delete(resource_id(file_id, "file"), principal)
    return Response(status_code=204)


def record_handler(record: SQSRecord) -> None:
    """One S3 notification: each ObjectCreated record's object checked (s3:TestEvent and others ignored); or one
    job of ours: an inbound message's file fetched from its platform into the bucket (whose notification follows)."""
    notification = json.loads(record.body)
    job = MediaFetchJob.of(notification) if isinstance(notification, dict) else None
    if job is not None:
        attempt = int(record.attributes.approximate_receive_count or 1)
        with log_context(correlation_id=job.correlation_id, file_id=job.file_id):
            fetched = bootstrap.media_fetcher().fetch(job, attempt)
            logger.info("inbound media job", extra={"status": fetched, "attempt": attempt})
        if fetched is FileStatus.REJECTED:
            metrics.add_metric(name="FilesRejected", unit=MetricUnit.Count, value=1)
        return
    if notification.get("Event") == "s3:TestEvent":
        return
    for entry in notification.get("Records", []):
        if not str(entry.get("eventName", "")).startswith("ObjectCreated:"):
            continue
        key = entry["s3"]["object"]["key"]
        status = bootstrap.file_service().object_created(key)
        logger.info("object checked", extra={"key": key, "status": status})
        if status is not None:
            metrics.add_metric(name=f"Files{status.title()}", unit=MetricUnit.Count, value=1)


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return serve_or_consume(app, event, context, record_handler, queue_setting="file_events_queue_url")
