"""The files API's request body and views (issue 18)."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import Field, StringConstraints

from chat4all.api.schemas import RequestModel
from chat4all.services.files import CreateFile

if TYPE_CHECKING:
    from chat4all.domain.files import FileRecord
    from chat4all.services.files import FileLinks

Filename = Annotated[
    str, StringConstraints(min_length=1, max_length=255, pattern=r"^[^/\\\x00-\x1f]*\S[^/\\\x00-\x1f]*$")
]
MimeType = Annotated[str, StringConstraints(min_length=3, max_length=127, pattern=r"^[A-Za-z0-9.+-]+/[A-Za-z0-9.+-]+$")]


class CreateFileRequest(RequestModel):
    filename: Filename
    mime_type: MimeType
    size: Annotated[int, Field(ge=1, le=2**53)]
    conversation_id: uuid.UUID | None = None

    def command(self) -> CreateFile:
        return CreateFile(
            file_id=str(uuid.uuid4()),
            filename=self.filename,
            mime_type=self.mime_type,
            size=self.size,
            conversation_id=str(self.conversation_id) if self.conversation_id else None,
        )


def file_view(record: FileRecord, links: FileLinks | None = None) -> dict[str, Any]:
    view: dict[str, Any] = {
        "file_id": record.file_id,
        "filename": record.filename,
        "mime_type": record.mime_type,
        "size": record.size,
        "status": record.status.value,
        "created_at": record.created_at.isoformat().replace("+00:00", "Z"),
    }
    if record.reason and record.status.value in ("REJECTED", "INFECTED"):
        view["reason"] = record.reason
    if links is not None and links.download_url:
        view["download_url"] = links.download_url
        if links.thumbnail_url:
            view["thumbnail"] = {"url": links.thumbnail_url, "mime_type": "image/jpeg"}
    return view
