"""The `files` collection: one document per file, its metadata only (the bytes are in S3)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pymongo import ReturnDocument

from chat4all.adapters.mongo.connection import DURABLE, inserted, translated
from chat4all.domain.files import FileKind, FileRecord, FileStatus, utcnow
from chat4all.ports import FileStore

if TYPE_CHECKING:
    from collections.abc import Sequence

    from pymongo.database import Database


def to_document(record: FileRecord) -> dict[str, Any]:
    return {
        "_id": record.file_id,
        "filename": record.filename,
        "mime_type": record.mime_type,
        "size": record.size,
        "status": record.status.value,
        "owner_id": record.owner_id,
        "conversation_ids": list(record.conversation_ids),
        "upload_id": record.upload_id,
        "kind": record.kind.value if record.kind else None,
        "thumbnail": record.thumbnail,
        "reason": record.reason,
        "created_at": record.created_at,
        "updated_at": record.updated_at,
    }


def from_document(doc: dict[str, Any]) -> FileRecord:
    return FileRecord(
        file_id=doc["_id"],
        filename=doc["filename"],
        mime_type=doc["mime_type"],
        size=int(doc["size"]),
        status=FileStatus(doc["status"]),
        owner_id=doc.get("owner_id"),
        conversation_ids=list(doc.get("conversation_ids") or []),
        upload_id=doc.get("upload_id"),
        kind=FileKind(doc["kind"]) if doc.get("kind") else None,
        thumbnail=bool(doc.get("thumbnail")),
        reason=doc.get("reason"),
        created_at=doc["created_at"],
        updated_at=doc.get("updated_at") or doc["created_at"],
    )


class MongoFileStore(FileStore):
    def __init__(self, db: Database[dict[str, Any]]) -> None:
        self.collection = db.files.with_options(write_concern=DURABLE)

    def insert(self, record: FileRecord) -> None:
        with translated():
            self.collection.insert_one(to_document(record))

    def insert_once(self, record: FileRecord) -> bool:
        return inserted(lambda: self.insert(record))

    def get(self, file_id: str) -> FileRecord | None:
        with translated():
            doc = self.collection.find_one({"_id": file_id})
        return from_document(doc) if doc else None

    def move(
        self, file_id: str, from_statuses: Sequence[FileStatus], to: FileStatus, **fields: Any
    ) -> FileRecord | None:
        values = {name: value.value if isinstance(value, FileKind) else value for name, value in fields.items()}
        with translated():
            doc = self.collection.find_one_and_update(
                {"_id": file_id, "status": {"$in": [s.value for s in from_statuses]}},
                {"$set": {**values, "status": to.value, "updated_at": utcnow()}},
                return_document=ReturnDocument.AFTER,
            )
        return from_document(doc) if doc else None

    def add_conversation(self, file_id: str, conversation_id: str) -> None:
        with translated():
            self.collection.update_one({"_id": file_id}, {"$addToSet": {"conversation_ids": conversation_id}})

    def delete(self, file_id: str) -> None:
        with translated():
            self.collection.delete_one({"_id": file_id})
