"""What may leave the machine: outgoing requests built from whitelisted record fields only.

``OutgoingRequest`` is the one request type every remote call uses (teacher, judge, pair
selection): a fixed system instruction, named text fields and, optionally, binary mask PNGs.
The record's local identifiers travel beside it in ``RecordContext`` so that the privacy guard
can check the request against them; the context itself is never serialised.
"""

from __future__ import annotations

import hashlib
import io
import json
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from cme_vlm.anatomy import Anatomy
from cme_vlm.data.geometry import MaskGeometry, mask_geometry
from cme_vlm.errors import DataError
from cme_vlm.schema import Fact

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CRITICAL_CHUNKS = (b"IHDR", b"IDAT", b"IEND")

SYSTEM_INSTRUCTION = (
    "You are a senior colorectal surgeon and an expert in {procedure}. "
    "A trainee looks at a laparoscopic frame in which one anatomical structure is highlighted by a "
    "semi-transparent green overlay. You do not see the frame; you receive the structure, the procedure and "
    "its side, the phase, facts about the structure that hold for this procedure and side, the trainee's "
    "question, the binary mask of the highlighted region and a description of its geometry. Answer exactly as "
    "an expert looking at the overlay image should answer the trainee: the first sentence identifies the "
    "structure by name, then say where it lies, why it matters for this procedure and side, and one pitfall. "
    "Write {min_words} to {max_words} words of plain prose, no lists, and do not mention the mask, the overlay "
    "data or that you cannot see the image."
)


@dataclass(frozen=True)
class RecordContext:
    """Local facts about the record a request belongs to; used for checks, never sent."""

    record_id: str
    procedure: str
    frame: str
    mask: np.ndarray | None = None  # bool (H, W); the only mask a request may carry

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> RecordContext:
        """Build from a dataset row (``cme_vlm.data.records.RECORD_FEATURES``)."""
        mask = row.get("mask")
        return cls(row["id"], row["procedure"], row["frame"], None if mask is None else mask_array(mask))


@dataclass(frozen=True)
class OutgoingRequest:
    """One remote call: ``purpose`` selects the field whitelist; ``masks`` are PNG bytes."""

    purpose: str
    system: str
    fields: dict[str, str]
    context: RecordContext = field(repr=False, compare=False)
    masks: tuple[bytes, ...] = ()

    def user_text(self) -> str:
        """The fields as the text the model reads, in a fixed order."""
        return "\n".join(f"{name.replace('_', ' ').capitalize()}: {value}" for name, value in self.fields.items())

    def content_key(self, model: str, settings: dict[str, Any], schema: dict[str, Any]) -> str:
        """Content address of everything that shapes the answer (model, settings, text, masks, schema)."""
        blob = json.dumps(
            {
                "model": model,
                "settings": settings,
                "schema": schema,
                "system": self.system,
                "text": self.user_text(),
                "masks": [hashlib.sha256(m).hexdigest() for m in self.masks],
            },
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()


def mask_array(image: Image.Image | np.ndarray) -> np.ndarray:
    """A stored mask (PIL "L" 0/255 or array) as a bool (H, W) array."""
    arr = np.asarray(image)
    if arr.ndim != 2:
        raise DataError(f"mask has shape {arr.shape}; masks must be single-channel (H, W).")
    return arr > 0


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(type, payload) of each PNG chunk; raises ValueError for a damaged PNG."""
    if not data.startswith(PNG_SIGNATURE):
        raise ValueError("not a PNG (bad signature)")
    chunks, pos = [], len(PNG_SIGNATURE)
    while pos < len(data):
        if pos + 8 > len(data):
            raise ValueError("truncated chunk header")
        (length,), kind = struct.unpack(">I", data[pos : pos + 4]), data[pos + 4 : pos + 8]
        payload = data[pos + 8 : pos + 8 + length]
        crc = data[pos + 8 + length : pos + 12 + length]
        if len(payload) != length or len(crc) != 4 or struct.unpack(">I", crc)[0] != zlib.crc32(kind + payload):
            raise ValueError(f"damaged chunk {kind!r}")
        chunks.append((kind, payload))
        pos += 12 + length
    return chunks


def _assemble(chunks: list[tuple[bytes, bytes]]) -> bytes:
    out = bytearray(PNG_SIGNATURE)
    for kind, payload in chunks:
        out += struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
    return bytes(out)


def encode_mask(mask: np.ndarray) -> bytes:
    """A bool mask as a 1-bit greyscale PNG holding only IHDR, IDAT and IEND (no metadata)."""
    buf = io.BytesIO()
    Image.fromarray(np.asarray(mask, dtype=bool)).save(buf, format="PNG", optimize=False)
    return _assemble([c for c in png_chunks(buf.getvalue()) if c[0] in CRITICAL_CHUNKS])


@dataclass(frozen=True)
class TeacherRequest:
    """The whitelisted content of one teacher question, plus its local context."""

    structure: str  # registry key
    display_name: str
    facts: tuple[Fact, ...]  # only those true for the record's side and phase (Anatomy.facts_for)
    side: str
    phase: str
    prompt: str
    geometry: MaskGeometry
    mask_png: bytes
    procedure: str  # anatomy.procedure, e.g. "Complete Mesocolic Excision"
    scene: str  # the record's procedure and side in words (Anatomy.scene), e.g. "left-sided CME"
    context: RecordContext = field(repr=False, compare=False)

    def outgoing(self, min_words: int, max_words: int) -> OutgoingRequest:
        """The request as it is sent to a remote teacher."""
        return OutgoingRequest(
            purpose="teacher",
            system=SYSTEM_INSTRUCTION.format(procedure=self.procedure, min_words=min_words, max_words=max_words),
            fields={
                "structure": self.display_name,
                "facts": " ".join(f.text for f in self.facts),
                "side": self.scene,
                "phase": self.phase,
                "prompt": self.prompt,
                "geometry": self.geometry.describe(),
            },
            context=self.context,
            masks=(self.mask_png,),
        )


def build_teacher_request(row: dict[str, Any], anatomy: Anatomy) -> TeacherRequest:
    """A teacher request from a dataset row: reads only whitelisted columns and the mask."""
    context = RecordContext.from_row(row)
    key = anatomy.resolve(row["structure"], f"record {row['id']}")
    spec = anatomy[key]
    return TeacherRequest(
        structure=key,
        display_name=spec.display_name,
        facts=tuple(anatomy.facts_for(key, row["side"], row["phase"])),
        side=row["side"],
        phase=row["phase"],
        prompt=row["prompt"],
        geometry=mask_geometry(context.mask),
        mask_png=encode_mask(context.mask),
        procedure=anatomy.cfg.procedure,
        scene=anatomy.scene(row["side"]),
        context=context,
    )
