"""Numba's on-disk cache of compiled kernels, kept in step with all of minicnn's backend sources.

Numba ties a cached kernel to its own source file only (that file's modification time and size): a
kernel that calls or inlines a function from another file (simd.py's vector intrinsics,
numba_common's helpers) keeps its old machine code when only that other file changes. This is
Numba's documented limitation, and it bit this project: a changed intrinsic ran its old version
until __pycache__ was emptied, so a test meant to catch the change passed. So before the Numba
backend's first kernel loads, the digest of every source file in minicnn/backend is compared with the
one its cached kernels were compiled from; when the two differ (a `git pull`, an edit, an upgrade
in place) those cached kernels are removed, compiled again on first use, and the new digest recorded.

    sources_digest(folder)        a SHA-256 over the names and contents of folder's *.py files
    refresh(kernel)               clear kernel's cache folder if it was made from other sources
    clear_if_stale(folder, digest)   the same for a folder and a digest
"""
import glob
import hashlib
import os

_STAMP = "minicnn-kernels.digest"


def sources_digest(folder):
    """The hex SHA-256 of the names and bytes of every *.py file directly in folder, in name order."""
    digest = hashlib.sha256()
    for path in sorted(glob.glob(os.path.join(folder, "*.py"))):
        digest.update(os.path.basename(path).encode() + b"\0")
        with open(path, "rb") as f:
            digest.update(f.read())
        digest.update(b"\0")
    return digest.hexdigest()


def refresh(kernel):
    """Make sure the cache folder of `kernel` (a Numba dispatcher compiled with cache=True) holds no
    kernel compiled from other sources than minicnn/backend's (this file's folder).
    Returns True when it removed the cached kernels (*.nbi, *.nbc) and recorded the new digest. Does
    nothing where Numba keeps no cache folder for it or the folder cannot be written (Numba then
    caches nothing there either)."""
    folder = getattr(getattr(kernel, "_cache", None), "_cache_path", None)
    if not folder:
        return False
    return clear_if_stale(folder, sources_digest(os.path.dirname(os.path.abspath(__file__))))


def clear_if_stale(folder, digest):
    """Remove folder's *.nbi and *.nbc files unless its stamp says they were made from `digest`; then
    write the stamp (atomically). A missing folder is made and stamped before anything compiles into
    it (else the next process would find kernels without a stamp and compile them all again).
    Returns whether the folder was cleared (or stamped anew)."""
    stamp = os.path.join(folder, _STAMP)
    try:
        with open(stamp) as f:
            if f.read().strip() == digest:
                return False
    except OSError:
        pass
    try:
        os.makedirs(folder, exist_ok=True)
        for path in glob.glob(os.path.join(folder, "*.nbi")) + glob.glob(os.path.join(folder, "*.nbc")):
            try:
                os.remove(path)
            except FileNotFoundError:             # another process cleared it first
                pass
        temporary = f"{stamp}.{os.getpid()}.tmp"
        with open(temporary, "w") as f:
            f.write(digest + "\n")
        os.replace(temporary, stamp)
    except OSError:                               # a read-only install: Numba writes nothing there
        return False
    return True
