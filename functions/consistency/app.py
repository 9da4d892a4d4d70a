"""Consistency: on a schedule (weekly by default), checks that everything MongoDB names exists in PostgreSQL
(chat4all.services.consistency) and publishes the error rate as a metric.

Metrics: ConsistencyErrorRate (percent; the seed's target is under 0.01), ConsistencyErrors and
ConsistencyDocumentsChecked (counts). Findings (at most 100) are logged; the report is the invocation's result.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aws_lambda_powertools.metrics import MetricUnit

from chat4all import bootstrap
from chat4all.observability import logger, metrics, tracer

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.typing import LambdaContext


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    report = bootstrap.consistency_check().run()
    metrics.add_metric(name="ConsistencyErrorRate", unit=MetricUnit.Percent, value=report.error_rate * 100)
    metrics.add_metric(name="ConsistencyErrors", unit=MetricUnit.Count, value=report.errors)
    metrics.add_metric(name="ConsistencyDocumentsChecked", unit=MetricUnit.Count, value=report.total_checked)
    result = report.as_dict()
    if report.errors or report.notes:
        logger.warning("inconsistencies found", extra=result)
    else:
        logger.info("consistent", extra={"checked": result["checked"], "seconds": result["seconds"]})
    return result
