"""The Numba cache is cleared when any backend source changes (backend/kernel_cache.py): Numba itself
notices only changes to a kernel's own file, so an edited intrinsic would run its old code."""
import os

from minicnn.backend import kernel_cache


def _write(path, text):
    with open(path, "w") as f:
        f.write(text)


def test_the_digest_follows_every_source_and_only_sources(tmp_path):
    _write(tmp_path / "a.py", "x = 1\n")
    _write(tmp_path / "b.py", "y = 2\n")
    first = kernel_cache.sources_digest(str(tmp_path))
    _write(tmp_path / "notes.txt", "not a source")
    assert kernel_cache.sources_digest(str(tmp_path)) == first
    _write(tmp_path / "b.py", "y = 3\n")                        # the file the kernels do not live in
    assert kernel_cache.sources_digest(str(tmp_path)) != first
    _write(tmp_path / "b.py", "y = 2\n")
    assert kernel_cache.sources_digest(str(tmp_path)) == first
    os.rename(tmp_path / "b.py", tmp_path / "c.py")             # the same bytes under another name
    assert kernel_cache.sources_digest(str(tmp_path)) != first


def test_stale_kernels_are_removed_once_and_the_rest_kept(tmp_path):
    cached = [tmp_path / "numba_blocked._block_conv-276.py311.nbi", tmp_path / "numba_blocked._block_conv-276.py311.1.nbc"]
    for path in cached:
        _write(path, "old machine code")
    _write(tmp_path / "numba_blocked.cpython-311.pyc", "bytecode")
    assert kernel_cache.clear_if_stale(str(tmp_path), "digest one")            # no stamp yet: stale
    assert not any(path.exists() for path in cached)
    assert (tmp_path / "numba_blocked.cpython-311.pyc").exists()
    _write(cached[0], "new machine code")
    assert not kernel_cache.clear_if_stale(str(tmp_path), "digest one")        # the same sources: kept
    assert cached[0].exists()
    assert kernel_cache.clear_if_stale(str(tmp_path), "digest two")            # a source changed
    assert not cached[0].exists()
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_a_new_cache_folder_is_stamped_before_anything_compiles_into_it(tmp_path):
    folder = tmp_path / "__pycache__"
    assert kernel_cache.clear_if_stale(str(folder), "digest one")
    assert (folder / "minicnn-kernels.digest").read_text().strip() == "digest one"
    _write(folder / "numba_common._all_finite-150.py311.nbi", "compiled after the stamp")
    assert not kernel_cache.clear_if_stale(str(folder), "digest one")        # the next process keeps it
    assert (folder / "numba_common._all_finite-150.py311.nbi").exists()


def test_the_backend_cache_is_stamped_with_the_current_sources():
    from minicnn.backend import numba_common
    folder = numba_common._all_finite._cache._cache_path
    backend = os.path.dirname(kernel_cache.__file__)
    with open(os.path.join(folder, "minicnn-kernels.digest")) as f:
        assert f.read().strip() == kernel_cache.sources_digest(backend)
    assert not kernel_cache.refresh(numba_common._all_finite)                  # already in step


def test_a_kernel_without_a_cache_folder_is_left_alone():
    assert not kernel_cache.refresh(object())
