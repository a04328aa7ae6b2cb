"""Downloads that verify a checksum and never leave a partial file behind.

The file is streamed into a temporary file beside the destination while its MD5 is computed;
only a complete download with the published checksum is renamed into place. A dropped
connection, a short body, a wrong checksum or a server too slow for the deadline deletes the
temporary file and raises; a download killed before it could clean up leaves its temporary,
which the next download into that folder removes.
"""
import hashlib
import http.client
import os
import tempfile
import time
import urllib.error
import urllib.request

from tqdm.auto import tqdm

from ..checkpoint import remove_stale_temporaries

CHUNK = 1 << 16


class DownloadError(OSError):
    pass


def download(url, destination, md5, timeout=30, progress=None, deadline=600):
    """Fetch ``url`` into ``destination`` if its MD5 matches ``md5``; returns the path. ``timeout``
    bounds each read, ``deadline`` the whole download (seconds): a server that trickles a byte at a
    time does not keep it waiting forever."""
    directory = os.path.dirname(os.path.abspath(destination))
    os.makedirs(directory, exist_ok=True)
    remove_stale_temporaries(directory, ".part-")
    fd, tmp = tempfile.mkstemp(prefix=f".part-{os.getpid()}-", dir=directory)
    started = time.monotonic()
    try:
        digest = hashlib.md5()
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=os.path.basename(destination),
                      disable=None if progress is None else not progress, leave=False) as bar:
                received = 0
                while chunk := response.read1(CHUNK):          # what has arrived: the deadline is checked often
                    if time.monotonic() - started > deadline:
                        raise DownloadError(f"{url}: still downloading after {deadline:g} s ({received:,} bytes "
                                            f"received); the server is too slow, try again or another mirror")
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
