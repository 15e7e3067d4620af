"""Where a run's files go, judged offline: placeholder buckets and node-local paths.

Two questions a spec's `scaling.storage_path` (and `output`) raise before a cluster job starts,
answered from the string alone, without touching the storage:

`placeholder_bucket(uri)`: is this an example value nobody replaced? The cluster specs ship
`s3://YOUR-BUCKET/plateau/checkpoints`; submitted as is, it passes every check and fails only
when the first checkpoint is written, after the GPU nodes have booted. The rule:

1. A URI with a template marker anywhere - `<`, `>`, `{`, `}` or `$` (`<bucket>`, `{bucket}`,
   `${BUCKET}`) - is a placeholder. None of these is legal in a bucket name or usual in a key.
2. Otherwise only the bucket (the part after `scheme://`, up to the first `/`) is judged,
   case-insensitively, split into words at `-`, `_` and `.`:
   - a name of a possessive or example word followed only by filler words, and at least one of
     them "bucket": `YOUR-BUCKET`, `my-bucket`, `example-bucket`, `your_bucket_name`,
     `my-s3-bucket` (first words: your, my, example, sample, some, the; filler: bucket, name,
     s3, gcs, gs, storage, here);
   - a name that, with the separators removed, is a stock placeholder: `bucket`,
     `bucket-name`, `changeme`, `replace-me`, `placeholder`, `todo`, `fixme`, or only x's
     (`xxx`).
   A real name with one of these words among others (`my-bucket-prod`, `your-company-data`) is
   not a placeholder: the rule errs towards letting a real bucket through.
3. A path without a scheme, or a `file://` URI, has no bucket: never a placeholder.

`is_node_local(path)`: would files written there stay on the node that wrote them? True for a
plain path (relative, `~/...` or absolute) and for `file://` and `local://` URIs; False for a URI
of any other scheme (`s3://`, `gs://`, `hdfs://`, `abfs://`, ...), which Ray Train writes through
pyarrow to storage every node reaches. An absolute path on an NFS/EFS/Lustre mount that every
node shares cannot be told apart from a local disk offline, so an absolute path counts as
node-local unless the caller names it shared (`shared_mounts`). Proposed spec field for that:
`scaling.storage_shared: true` - the user asserts that `storage_path` is mounted at the same path
on every node - which `service/jobs.py` would turn into `shared_mounts=[storage_path]`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from urllib.parse import urlparse

__all__ = ["placeholder_bucket", "is_node_local", "bucket_of"]

TEMPLATE_MARKERS = re.compile(r"[<>{}$]")
POSSESSIVE = {"your", "my", "example", "sample", "some", "the"}
FILLER = {"bucket", "name", "s3", "gcs", "gs", "storage", "here"}
STOCK = {"bucket", "bucketname", "changeme", "replaceme", "placeholder", "todo", "fixme"}
LOCAL_SCHEMES = {"", "file", "local"}


def _scheme(path: str) -> str:
    """The URI scheme, lower-cased; '' for a plain path (a Windows drive letter is no scheme)."""
    match = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://", path)
    return match.group(1).lower() if match else ""


def bucket_of(uri: str) -> str:
    """The bucket (authority) of `scheme://bucket/key...`; '' for a plain path or file://."""
    if _scheme(uri) in LOCAL_SCHEMES:
        return ""
    return urlparse(uri).netloc


def placeholder_bucket(uri: str) -> bool:
    """True when `uri` still holds an example bucket (`s3://YOUR-BUCKET/...`, `gs://<bucket>`);
    see the module doc for the exact rule."""
    uri = uri.strip()
    if _scheme(uri) in LOCAL_SCHEMES:
        return False
    if TEMPLATE_MARKERS.search(uri):
        return True
    bucket = bucket_of(uri).lower()
    words = [w for w in re.split(r"[-_.]", bucket) if w]
    if not words:
        return True   # `s3:///key` or `s3://`: no bucket at all
    flat = "".join(words)
    if flat in STOCK or set(flat) == {"x"}:
        return True
    rest = words[1:]
    return words[0] in POSSESSIVE and bool(rest) and set(rest) <= FILLER and "bucket" in rest


def is_node_local(path: str, *, shared_mounts: Iterable[str] = ()) -> bool:
    """True when files written at `path` stay on the writing node's own disk (as far as the
    string tells); `shared_mounts` lists directories the caller knows every node mounts."""
    if not path or not path.strip():
        raise ValueError("an empty path is neither local nor shared")
    path = path.strip()
    scheme = _scheme(path)
    if scheme not in LOCAL_SCHEMES:
        return False
    if scheme:
        path = urlparse(path).path
    if not os.path.isabs(os.path.expanduser(path)):
        return True   # relative: resolved against each process's own working directory
    for mount in shared_mounts:
        if _scheme(mount) in LOCAL_SCHEMES:
            root = os.path.normpath(urlparse(mount).path if _scheme(mount) else os.path.expanduser(mount))
            target = os.path.normpath(os.path.expanduser(path))
            if target == root or target.startswith(root.rstrip("/") + "/"):
                return False
    return True
