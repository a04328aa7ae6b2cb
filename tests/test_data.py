"""Data: the IDX reader on real and broken files, the dataset lookup order, verified downloads
from a real HTTP server on 127.0.0.1 (corrupt file, dropped connection), DataLoader, transforms."""
import gzip
import hashlib
import http.server
import os
import threading

import numpy as np
import pytest

from minicnn import data

SHARED = os.environ.get("MINICNN_DATA")
needs_data = pytest.mark.skipif(not SHARED or not os.path.isdir(os.path.join(SHARED or "", "mnist")),
                                reason="MINICNN_DATA does not point at the MNIST files")
FILES = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """Never touch the user's cache or a system folder during tests."""
    monkeypatch.setenv("MINICNN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(data.FashionMNIST, "system_dirs", [])


def write_idx(path, array, type_code=0x08, compress=False):
    header = bytes([0, 0, type_code, array.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    with (gzip.open if compress else open)(path, "wb") as f:
        f.write(payload)


def write_small_dataset(folder, n=20, compress=True):
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix in ("train", "t10k"):
        suffix = ".gz" if compress else ""
        write_idx(os.path.join(folder, f"{prefix}-images-idx3-ubyte{suffix}"), rng.integers(0, 256, (n, 28, 28)), compress=compress)
        write_idx(os.path.join(folder, f"{prefix}-labels-idx1-ubyte{suffix}"), np.arange(n) % 10, compress=compress)


# ------------------------------------------------------------------ IDX reader

def test_idx_round_trip_raw_and_gzip(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28)).astype(np.uint8)
    write_idx(tmp_path / "raw", images)
    write_idx(tmp_path / "gz", images, compress=True)
    np.testing.assert_array_equal(data.read_idx(tmp_path / "raw"), images)
    np.testing.assert_array_equal(data.read_idx(tmp_path / "gz", expected_ndim=3), images)


@pytest.mark.parametrize("damage,pattern", [
    (lambda b: b[:-10], r"truncated: the header's \(5, 28, 28\) needs 3,920 bytes, the file ends after 3,910"),
    (lambda b: b + b"xx", "too long"),
    (lambda b: b"\x01\x02" + b[2:], "not an IDX file"),
    (lambda b: b[:2] + b"\x07" + b[3:], "unknown IDX value type 0x07"),
    (lambda b: b[:3] + b"\x01" + b[4:], "expected 3 dimensions, the header says 1"),
    (lambda b: b[:6], "truncated: the header needs 12 bytes"),
])
def test_idx_corruptions_name_the_file_and_fault(tmp_path, damage, pattern):
    write_idx(tmp_path / "ok", np.zeros((5, 28, 28)))
    (tmp_path / "bad").write_bytes(damage((tmp_path / "ok").read_bytes()))
    with pytest.raises(data.CorruptFileError, match=pattern) as info:
        data.read_idx(tmp_path / "bad", expected_ndim=3)
    assert "bad" in str(info.value)


def test_truncated_gzip(tmp_path):
    write_idx(tmp_path / "f.gz", np.zeros((50, 28, 28)), compress=True)
    raw = (tmp_path / "f.gz").read_bytes()
    (tmp_path / "cut.gz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(data.CorruptFileError, match="cut.gz: broken or truncated gzip"):
        data.read_idx(tmp_path / "cut.gz")


def test_wrong_image_size(tmp_path):
    write_small_dataset(tmp_path / "d")
    write_idx(tmp_path / "d" / "train-images-idx3-ubyte.gz", np.zeros((20, 32, 32)), compress=True)
    with pytest.raises(ValueError, match=r"expected items of shape \(28, 28\), got \(32, 32\)"):
        data.MNIST(root=tmp_path / "d", download=False)


# ------------------------------------------------------------------ real datasets and lookup

@needs_data
def test_real_mnist_and_fashion_mnist():
    train = data.MNIST(train=True, download=False)
    test = data.MNIST(train=False, download=False)
    assert train.data.shape == (60000, 1, 28, 28) and train.data.dtype == np.uint8 and train.targets.dtype == np.int64
    assert list(train.targets[:10]) == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert list(np.bincount(train.targets)) == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert list(test.targets[:5]) == [7, 2, 1, 0, 4]
    assert abs(train.data.mean() / 255 - 0.1307) < 1e-4 and abs(train.data.std() / 255 - 0.3081) < 1e-4
    fashion = data.FashionMNIST(train=True, download=False)
    assert list(fashion.targets[:6]) == [9, 0, 0, 3, 0, 2] and fashion.classes[9] == "Ankle boot"
    assert list(np.bincount(fashion.targets)) == [6000] * 10


def test_lookup_order_root_then_env_then_cache(tmp_path, monkeypatch):
    for name, n in (("root", 11), ("env/mnist", 12), ("cache/mnist", 13)):
        write_small_dataset(tmp_path / name, n=n)
    monkeypatch.setenv("MINICNN_DATA", str(tmp_path / "env"))
    assert len(data.MNIST(root=tmp_path / "root", download=False)) == 11
    assert len(data.MNIST(download=False)) == 12
    monkeypatch.delenv("MINICNN_DATA")
    assert len(data.MNIST(download=False)) == 13


def test_raw_files_are_found_too(tmp_path):
    write_small_dataset(tmp_path / "raw", compress=False)
    assert len(data.MNIST(root=tmp_path / "raw", download=False)) == 20


def test_no_files_and_no_download_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.delenv("MINICNN_DATA", raising=False)
    with pytest.raises(FileNotFoundError) as info:
        data.MNIST(root=tmp_path / "nowhere", download=False)
    message = str(info.value)
    assert "nowhere" in message and "cache" in message and "MINICNN_DATA" in message


# ------------------------------------------------------------------ downloads from a local server

class Handler(http.server.SimpleHTTPRequestHandler):
    drop = set()           # file names for which the server sends half the body, then hangs up

    def log_message(self, *args):
        pass

    def do_GET(self):
        name = os.path.basename(self.path)
        if name in self.drop:
            path = os.path.join(self.directory, name)
            body = open(path, "rb").read()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.connection.close()
            return
        super().do_GET()


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "served"
    write_small_dataset(root, n=30)
    handler = lambda *a, **k: Handler(*a, directory=str(root), **k)   # noqa: E731
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/", root
    httpd.shutdown()
    httpd.server_close()
    Handler.drop = set()


def local_mnist(url, root):
    md5 = {n: hashlib.md5((root / n).read_bytes()).hexdigest() for n in FILES}

    class LocalMNIST(data.MNIST):
        mirrors = [url]
        train_files = [(n, md5[n]) for n in FILES[:2]]
        test_files = [(n, md5[n]) for n in FILES[2:]]
    return LocalMNIST


def test_download_verifies_and_caches(server, tmp_path, monkeypatch):
    monkeypatch.delenv("MINICNN_DATA", raising=False)
    monkeypatch.delenv("MINICNN_OFFLINE")
    url, root = server
    cls = local_mnist(url, root)
    ds = cls(train=True, progress=False)
    assert len(ds) == 30
    cached = sorted(os.listdir(tmp_path / "cache" / "mnist"))
    assert cached == sorted(FILES[:2])
    Handler.drop = set(FILES)                       # a second load must not touch the network
    assert len(cls(train=True, progress=False)) == 30


def test_corrupt_download_leaves_nothing(server, tmp_path, monkeypatch):
    monkeypatch.delenv("MINICNN_DATA", raising=False)
    monkeypatch.delenv("MINICNN_OFFLINE")
    url, root = server
    cls = local_mnist(url, root)
    (root / FILES[0]).write_bytes(b"\x1f\x8b corrupted on the server")
    with pytest.raises(FileNotFoundError, match="checksum mismatch"):
        cls(train=True, progress=False)
    assert os.listdir(tmp_path / "cache" / "mnist") == []


def test_dropped_connection_leaves_nothing(server, tmp_path, monkeypatch):
    monkeypatch.delenv("MINICNN_DATA", raising=False)
    monkeypatch.delenv("MINICNN_OFFLINE")
    url, root = server
    Handler.drop = {FILES[0]}
    with pytest.raises(FileNotFoundError, match="downloading failed"):
        local_mnist(url, root)(train=True, progress=False)
    assert os.listdir(tmp_path / "cache" / "mnist") == []


def test_unreachable_mirror(tmp_path, monkeypatch):
    monkeypatch.delenv("MINICNN_DATA", raising=False)

    class Offline(data.MNIST):
        mirrors = ["http://127.0.0.1:9/"]           # the discard port: nothing listens
    with pytest.raises(FileNotFoundError, match="looked in"):
        Offline(train=False, progress=False)


# ------------------------------------------------------------------ DataLoader, split, transforms

def small_arrays(n=103):
    rng = np.random.default_rng(0)
    return data.ArrayDataset(rng.integers(0, 256, (n, 1, 8, 8)).astype(np.uint8), np.arange(n) % 10)


def test_dataloader_batches_and_reproducibility():
    ds = small_arrays()
    loader = data.DataLoader(ds, 10, shuffle=True, seed=3)
    batches = list(loader)
    assert len(loader) == len(batches) == 11 and len(batches[-1][1]) == 3
    x, y = batches[0]
    assert x.dtype == np.float32 and y.dtype == np.int64 and x.shape == (10, 1, 8, 8) and x.max() <= 1
    seen = np.concatenate([b[1] for b in batches])
    assert sorted(seen) == sorted(ds.targets)
    again = list(data.DataLoader(ds, 10, shuffle=True, seed=3))
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(batches, again))
    assert len(list(data.DataLoader(ds, 10, drop_last=True))) == 10
    first_epoch, second_epoch = [np.concatenate([b[1] for b in loader]) for _ in range(2)]
    assert not np.array_equal(first_epoch, second_epoch)


def test_dataloader_errors():
    with pytest.raises(ValueError, match="batch_size"):
        data.DataLoader(small_arrays(), 0)


def test_random_split():
    a, b = data.random_split(small_arrays(100), [80, 20], seed=0)
    assert len(a) == 80 and len(b) == 20
    assert not set(a.indices) & set(b.indices)
    c, d = data.random_split(small_arrays(100), [0.9, 0.1], seed=0)
    assert (len(c), len(d)) == (90, 10)
    with pytest.raises(ValueError, match="do not add up"):
        data.random_split(small_arrays(100), [50, 20])


def test_transforms_shapes_dtypes_and_effects():
    x = np.zeros((4, 1, 9, 9), np.uint8)
    x[:, :, 4, 4] = 255
    shifted = data.RandomCrop(9, padding=2, seed=0)(x)
    assert shifted.shape == x.shape and shifted.dtype == np.uint8 and (shifted == 255).sum() <= 4
    flipped = data.RandomHorizontalFlip(p=1.0)(np.arange(6, dtype=np.uint8).reshape(1, 1, 2, 3))
    assert flipped[0, 0, 0].tolist() == [2, 1, 0]
    rotated = data.RandomRotation((90, 90))(np.eye(5, dtype=np.float32)[None, None])
    np.testing.assert_allclose(rotated[0, 0], np.eye(5)[:, ::-1], atol=1e-6)
    resized = data.Resize(4)(np.ones((2, 3, 8, 10), np.uint8) * 7)  # an int is the shorter side
    assert resized.shape == (2, 3, 4, 5) and (resized == 7).all()
    assert data.Resize((4, 4))(np.ones((1, 8, 10), np.uint8)).shape == (1, 4, 4)
    assert data.CenterCrop(3)(np.arange(25).reshape(1, 5, 5)).tolist() == [[[6, 7, 8], [11, 12, 13], [16, 17, 18]]]
    normed = data.Compose([data.ToFloat(), data.Normalize(0.5, 0.5)])(np.full((1, 1, 2, 2), 255, np.uint8))
    assert normed.dtype == np.float32 and np.allclose(normed, 1.0)


def test_image_folder(tmp_path):
    from PIL import Image
    for cls, color in (("cat", (255, 0, 0)), ("dog", (0, 0, 255))):
        (tmp_path / cls).mkdir()
        for i in range(3):
            Image.new("RGB", (12 + i, 10), color).save(tmp_path / cls / f"{i}.png")
    folder = data.ImageFolder(tmp_path, transform=data.Compose([data.Resize(10), data.CenterCrop(8)]))
    assert folder.classes == ["cat", "dog"] and len(folder) == 6
    image, label = folder[4]
    assert image.shape == (3, 8, 8) and image.dtype == np.uint8 and label == 1 and image[2].min() == 255
    x, y = next(iter(data.DataLoader(folder, 6)))
    assert x.shape == (6, 3, 8, 8) and list(y) == [0, 0, 0, 1, 1, 1]
    (tmp_path / "dog" / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match="cannot read image .*broken.jpg"):
        data.ImageFolder(tmp_path)[6]
