"""Downloads that verify a checksum and never leave a partial file behind.

The file is streamed into a temporary file beside the destination while its MD5 is computed;
only a complete download with the published checksum is renamed into place. A dropped
connection, a short body or a wrong checksum deletes the temporary file and raises.
"""
import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.request

from tqdm.auto import tqdm

CHUNK = 1 << 16


class DownloadError(OSError):
    pass


def download(url, destination, md5, timeout=30, progress=None):
    """Fetch ``url`` into ``destination`` if its MD5 matches ``md5``; returns the path."""
    directory = os.path.dirname(os.path.abspath(destination))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".part-", dir=directory)
    try:
        digest = hashlib.md5()
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=os.path.basename(destination),
                      disable=None if progress is None else not progress, leave=False) as bar:
                received = 0
                while chunk := response.read(CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
            if total is not None and received != total:
                raise DownloadError(f"{url}: connection closed after {received} of {total} bytes")
            out.flush()
            os.fsync(out.fileno())
        if digest.hexdigest() != md5:
            raise DownloadError(f"{url}: checksum mismatch (md5 {digest.hexdigest()}, expected {md5})")
        os.replace(tmp, destination)
        return destination
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as err:
        if not isinstance(err, DownloadError):
            err = DownloadError(f"{url}: {err}")
        raise err from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
