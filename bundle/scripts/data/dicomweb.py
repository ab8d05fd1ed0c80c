"""A small DICOMweb client (DICOM PS3.18) on the standard library: QIDO-RS search, WADO-RS retrieve, STOW-RS store.

Only what the PACS round trip needs, over ``urllib`` (no dependency beyond pydicom):

* **QIDO-RS** ``GET {base}/studies/{study}/series`` and ``.../series/{series}/instances`` with ``Accept:
  application/dicom+json``; answers are DICOM JSON (PS3.18 F.2) read into pydicom ``Dataset`` objects; ``204 No
  Content`` is an empty answer. ``includefield`` asks for attributes beyond the defaults (ViewPosition, ...).
* **WADO-RS** ``GET {base}/studies/{study}/series/{series}/instances/{instance}`` with ``Accept: multipart/related;
  type="application/dicom"; transfer-syntax=*`` (the instance as stored: the radiograph readers decode compressed
  syntaxes); the one part's bytes are the PS3.10 file.
* **STOW-RS** ``POST {base}/studies/{study}`` of ``multipart/related; type="application/dicom"`` (one part per PS3.10
  instance), ``Accept: application/dicom+json``; the answer's ``ReferencedSOPSequence`` (0008,1199) lists what was
  stored and ``FailedSOPSequence`` (0008,1198) what was not, with its ``FailureReason`` (0008,1197); an XML answer
  (``application/dicom+xml``, the default of some archives) is read too.

Authentication: the value of the environment variable named by ``auth_env`` (default ``XRAY2CT_DICOMWEB_AUTH``), when
set, is sent as the ``Authorization`` header (``Bearer <token>`` or ``Basic <base64 user:password>``), so that no
secret sits in a config file, a command line or a log. Every failure is a :class:`DicomWebError` (a ``ValueError``:
one line naming the request, the URL and the server's answer).
"""

from __future__ import annotations

import http.client
import json
import os
import re
import urllib.error
import urllib.parse
import urllib.request
import uuid
import xml.etree.ElementTree as ElementTree
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from email.message import Message

from pydicom.dataset import Dataset

__all__ = [
    "DicomWebClient",
    "DicomWebError",
    "StoreResult",
    "check_uid",
    "decode_multipart",
    "encode_multipart",
]

_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
_DICOM_JSON = "application/dicom+json"
_RETRIEVE = 'multipart/related; type="application/dicom"; transfer-syntax=*'
#: DICOM JSON tags of the STOW-RS answer.
_REFERENCED, _FAILED, _SOP_UID, _REASON = "00081199", "00081198", "00081155", "00081197"


class DicomWebError(ValueError):
    """A DICOMweb request that failed: the server is unreachable, or answered with an error or an unusable body."""


def check_uid(name: str, value: object) -> str:
    """``value`` as a DICOM UID (digits and dots, at most 64 characters), else ``ValueError`` naming ``name``.

    UIDs go into URL paths, so anything else is refused before a request is built.
    """
    text = str(value or "").strip()
    if not _UID.fullmatch(text) or len(text) > 64:
        raise ValueError(f"{name}: {value!r} is not a DICOM UID (digits and dots, at most 64 characters).")
    return text


def encode_multipart(parts: Sequence[bytes], part_type: str = "application/dicom") -> tuple[bytes, str]:
    """A ``multipart/related`` body of ``parts`` (RFC 2387) and its Content-Type header."""
    boundary = f"xray2ct-{uuid.uuid4().hex}"
    head = f"--{boundary}\r\nContent-Type: {part_type}\r\n\r\n".encode()
    body = b"".join(head + part + b"\r\n" for part in parts) + f"--{boundary}--\r\n".encode()
    return body, f'multipart/related; type="{part_type}"; boundary={boundary}'


def _content_type(header: str) -> Message:
    message = Message()
    message["Content-Type"] = header
    return message


def decode_multipart(body: bytes, content_type: str) -> list[tuple[dict[str, str], bytes]]:
    """The parts of a ``multipart/related`` body: ``(headers with lower-case names, content)`` each.

    The boundary comes from ``content_type`` (quoted or not); preamble, transport padding and epilogue are skipped.

    Raises:
        DicomWebError: not multipart, no boundary, or no closing delimiter (a truncated answer).
    """
    header = _content_type(content_type)
    boundary = header.get_param("boundary")
    if header.get_content_maintype() != "multipart" or not boundary:
        raise DicomWebError(f"expected a multipart answer with a boundary, got Content-Type {content_type!r}.")
    delimiter = b"\r\n--" + str(boundary).encode()
    chunks = (b"\r\n" + body).split(delimiter)
    if len(chunks) < 2 or not any(c.startswith(b"--") for c in chunks[1:]):
        raise DicomWebError("the multipart answer has no closing delimiter (truncated).")
    parts = []
    for chunk in chunks[1:]:
        if chunk.startswith(b"--"):  # the close delimiter; the rest is epilogue
            break
        _, _, rest = chunk.partition(b"\r\n")  # transport padding up to the line end
        if rest.startswith(b"\r\n"):
            head, content = b"", rest[2:]
        else:
            head, _, content = rest.partition(b"\r\n\r\n")
        headers = {}
        for line in head.decode("latin-1").split("\r\n"):
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        parts.append((headers, content))
    return parts


@dataclass
class StoreResult:
    """A STOW-RS answer: the SOP instance UIDs stored, and those that failed with their failure reason."""

    stored: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


def _json_values(item: Mapping, tag: str) -> list:
    return list((item.get(tag) or {}).get("Value") or [])


def _parse_store_json(body: bytes) -> StoreResult:
    answer = json.loads(body.decode("utf-8"))
    answer = answer[0] if isinstance(answer, list) and answer else answer
    if not isinstance(answer, Mapping):
        raise ValueError("not a DICOM JSON object")
    result = StoreResult()
    for item in _json_values(answer, _REFERENCED):
        result.stored += [str(v) for v in _json_values(item, _SOP_UID)]
    for item in _json_values(answer, _FAILED):
        reason = _json_values(item, _REASON)
        for uid in _json_values(item, _SOP_UID):
            result.failed[str(uid)] = f"failure reason {reason[0]:#06x}" if reason else "no reason given"
    return result


def _parse_store_xml(body: bytes) -> StoreResult:
    """The same from PS3.19 Native DICOM Model XML: ``DicomAttribute`` elements by ``tag``."""
    root = ElementTree.fromstring(body)
    result = StoreResult()

    def values(node, tag):
        return [v.text or "" for a in node.iter("DicomAttribute") if a.get("tag") == tag for v in a.iter("Value")]

    for sequence in root.iter("DicomAttribute"):
        if sequence.get("tag") not in (_REFERENCED, _FAILED):
            continue
        for item in sequence.iter("Item"):
            uids = values(item, _SOP_UID)
            if sequence.get("tag") == _REFERENCED:
                result.stored += uids
            else:
                reason = values(item, _REASON)
                for uid in uids:
                    result.failed[uid] = f"failure reason {int(reason[0]):#06x}" if reason else "no reason given"
    return result


class DicomWebClient:
    """QIDO-RS, WADO-RS and STOW-RS against one DICOMweb root (see the module docstring).

    Args:
        base_url: the DICOMweb root, e.g. ``http://127.0.0.1:8042/dicom-web`` (Orthanc's DICOMweb plugin).
        timeout_s: seconds to wait for each answer.
        auth_env: environment variable whose value, when set, is sent as the ``Authorization`` header.
    """

    def __init__(self, base_url: str, timeout_s: float = 60.0, auth_env: str | None = "XRAY2CT_DICOMWEB_AUTH") -> None:
        url = str(base_url or "").strip()
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError(
                f"dicomweb_url: expected the http(s) URL of a DICOMweb root (e.g. http://pacs:8042/dicom-web), got "
                f"{base_url!r}."
            )
        if parsed.username or parsed.password:
            raise ValueError(
                "dicomweb_url: credentials in the URL would end up in logs and reports; set the Authorization header "
                f"through the environment variable {auth_env or 'XRAY2CT_DICOMWEB_AUTH'} instead."
            )
        if not float(timeout_s) > 0:
            raise ValueError(f"timeout_s: expected a positive number of seconds, got {timeout_s!r}.")
        self.base_url, self.timeout_s, self.auth_env = url.rstrip("/"), float(timeout_s), auth_env

    def _request(
        self, what: str, method: str, path: str, accept: str, body: bytes | None = None, answers=(), **headers
    ) -> tuple[int, str, bytes]:
        """``(status, Content-Type, body)`` of one request; every failure as a one-line :class:`DicomWebError`,
        except an error status in ``answers``, whose body is the answer (STOW-RS 409: the failures)."""
        url = self.base_url + path
        request = urllib.request.Request(url, data=body, method=method, headers={"Accept": accept, **headers})
        auth = os.environ.get(self.auth_env) if self.auth_env else None
        if auth:
            request.add_unredirected_header("Authorization", auth)  # never forwarded to another host on a redirect
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as answer:
                return answer.status, answer.headers.get("Content-Type", ""), answer.read()
        except urllib.error.HTTPError as err:
            if err.code in answers:
                return err.code, err.headers.get("Content-Type", ""), err.read()
            detail = " ".join(err.read(300).decode("utf-8", "replace").split())
            raise DicomWebError(
                f"{what} {method} {url}: the server answered {err.code} {err.reason}"
                + (f" ({detail})" if detail else "")
            ) from None
        except urllib.error.URLError as err:
            raise DicomWebError(f"{what} {method} {url}: could not reach the server ({err.reason}).") from None
        except TimeoutError:
            raise DicomWebError(f"{what} {method} {url}: no answer within {self.timeout_s:g} s.") from None
        except (OSError, http.client.HTTPException) as err:  # a connection reset or an answer cut short
            raise DicomWebError(
                f"{what} {method} {url}: the connection failed ({type(err).__name__}: {err})."
            ) from None

    # ---- QIDO-RS --------------------------------------------------------------------------------------------------
    def search(self, path: str, params: Mapping[str, object] | None = None) -> list[Dataset]:
        """QIDO-RS: the matches of ``path`` (e.g. ``/studies/{uid}/series``) as datasets; list values repeat a key."""
        query = urllib.parse.urlencode(
            [(k, str(v)) for k, vs in (params or {}).items() for v in (vs if isinstance(vs, (list, tuple)) else [vs])]
        )
        full = path + (f"?{query}" if query else "")
        status, kind, body = self._request("QIDO-RS", "GET", full, _DICOM_JSON)
        if status == 204 or not body.strip():
            return []
        try:
            items = json.loads(body.decode("utf-8"))
            if not isinstance(items, list):
                raise ValueError("not a JSON array")
            return [Dataset.from_json(item, bulk_data_uri_handler=lambda *_: b"") for item in items]
        except (ValueError, TypeError, KeyError) as err:
            raise DicomWebError(
                f"QIDO-RS GET {self.base_url}{full}: expected a DICOM JSON array ({_DICOM_JSON}), got {kind!r} ({err})."
            ) from None

    def search_series(self, study_uid: str, **params) -> list[Dataset]:
        """The series of a study (each with its Modality, SeriesInstanceUID, ...)."""
        return self.search(f"/studies/{check_uid('study_uid', study_uid)}/series", params)

    def search_instances(self, study_uid: str, series_uid: str, includefield: Sequence[str] = ()) -> list[Dataset]:
        """The instances of a series, with the attributes of ``includefield`` (keywords or tags) where the server
        returns them."""
        path = f"/studies/{check_uid('study_uid', study_uid)}/series/{check_uid('series_uid', series_uid)}/instances"
        return self.search(path, {"includefield": list(includefield)} if includefield else None)

    # ---- WADO-RS --------------------------------------------------------------------------------------------------
    def retrieve_instance(self, study_uid: str, series_uid: str, instance_uid: str) -> bytes:
        """WADO-RS: one instance as its PS3.10 file bytes, in the transfer syntax the server stores it in."""
        path = (
            f"/studies/{check_uid('study_uid', study_uid)}/series/{check_uid('series_uid', series_uid)}"
            f"/instances/{check_uid('instance_uid', instance_uid)}"
        )
        _, kind, body = self._request("WADO-RS", "GET", path, _RETRIEVE)
        if _content_type(kind).get_content_type() == "application/dicom":
            return body  # a single-part answer
        parts = [content for headers, content in decode_multipart(body, kind)]
        if len(parts) != 1 or not parts[0]:
            raise DicomWebError(f"WADO-RS GET {self.base_url}{path}: expected one DICOM instance, got {len(parts)}.")
        return parts[0]

    # ---- STOW-RS --------------------------------------------------------------------------------------------------
    def store(self, study_uid: str, instances: Sequence[bytes]) -> StoreResult:
        """STOW-RS: store PS3.10 ``instances`` (all of ``study_uid``) in one request; the server's answer (200: all
        stored, 202: some failed, 409: none stored; the failures are in :attr:`StoreResult.failed`).

        Raises:
            DicomWebError: the request failed otherwise, or the answer cannot be read.
        """
        path = f"/studies/{check_uid('study_uid', study_uid)}"
        body, kind = encode_multipart(instances)
        try:
            status, answer_kind, answer = self._request(
                "STOW-RS", "POST", path, _DICOM_JSON, body, answers=(409,), **{"Content-Type": kind}
            )
        except DicomWebError as err:
            raise DicomWebError(f"{err} ({len(instances)} instances were sent)") from None
        if not answer.strip():
            raise DicomWebError(f"STOW-RS POST {self.base_url}{path}: the server's answer ({status}) is empty.")
        try:
            xml = "xml" in _content_type(answer_kind).get_content_type()
            return _parse_store_xml(answer) if xml else _parse_store_json(answer)
        except (ValueError, TypeError, ElementTree.ParseError) as err:
            raise DicomWebError(
                f"STOW-RS POST {self.base_url}{path}: could not read the answer ({answer_kind!r}: {err})."
            ) from None
