"""The cross-database consistency check from a shell: `python -m chat4all.ops.consistency [--json]`.

DATABASE_URL (the owner or the functions' role: it only reads) and MONGODB_URI name the databases; locally
the running `make dev` stack's are in `.devstack/running.json` (`databases`). Prints the counts, the error rate
against the seed's target (under 0.01%) and what was found (at most 100, by kind); exits 1 when the rate is not
under the target. The same check runs weekly as ConsistencyFunction (functions/consistency).
"""

from __future__ import annotations

import argparse
import json
import sys

from chat4all.adapters.mongo import connect
from chat4all.adapters.mongo.references import MongoReferenceSource
from chat4all.adapters.postgres import PostgresDatabase
from chat4all.adapters.postgres_references import PostgresReferenceTarget
from chat4all.ops import database_env
from chat4all.services.consistency import ConsistencyCheck, ConsistencyReport

PLURALS = {"delivery": "deliveries", "identity": "identities"}


def run(database_url: str, mongodb_uri: str) -> ConsistencyReport:
    database = PostgresDatabase(database_url)
    mongo = connect(mongodb_uri)
    try:
        return ConsistencyCheck(MongoReferenceSource(mongo), PostgresReferenceTarget(database)).run()
    finally:
        database.close()
        mongo.client.close()


def main(argv: list[str] | None = None, environ: dict[str, str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Check that what MongoDB names exists in PostgreSQL.")
    parser.add_argument("--json", action="store_true", help="the whole report as JSON")
    arguments = parser.parse_args(argv)
    env = database_env("consistency", environ)
    if env is None:
        return 2
    report = run(env["DATABASE_URL"], env["MONGODB_URI"])
    if arguments.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        counts = ", ".join(f"{n} {PLURALS.get(kind, kind + 's')}" for kind, n in report.checked.items())
        print(f"checked {counts} in {report.seconds:.1f} s")
        verdict = "within" if report.within_target else "NOT within"
        print(f"errors: {report.errors} (error rate {report.error_rate:.6%}, {verdict} the 0.01% target)")
        print(f"notes (settled documents naming a deleted channel): {report.notes}")
        for finding in report.findings:
            mark = "error" if finding.error else "note"
            print(f"  {mark}: {finding.kind} {finding.document_id}: {finding.problem}: {finding.missing_id}")
        if report.truncated:
            print("  (more not listed)")
    return 0 if report.within_target else 1


if __name__ == "__main__":
    sys.exit(main())
