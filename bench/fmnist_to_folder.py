"""Writes Fashion-MNIST (Debian's idx files) as an ImageNet-style folder of 28x28 PNGs,
ROOT/train/<class>/*.png and ROOT/val/<class>/*.png, so that `tern train --data folder
--image-size 224` trains ResNets at the paper's input size on it (the folder loader
upscales each image on decode).

    python3 bench/fmnist_to_folder.py IDX_DIR ROOT [TRAIN_LIMIT]
"""
import gzip, os, struct, sys
import numpy as np
from PIL import Image

CLASSES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot"]


def idx(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    magic, = struct.unpack(">I", data[:4])
    dims = struct.unpack(">" + "I" * (magic & 0xFF), data[4:4 + 4 * (magic & 0xFF)])
    return np.frombuffer(data, np.uint8, offset=4 + 4 * len(dims)).reshape(dims)


def find(src, stem):
    for name in (stem, stem + ".gz"):
        if os.path.exists(os.path.join(src, name)):
            return os.path.join(src, name)
    sys.exit(f"{src}: no {stem}[.gz]")


src, root = sys.argv[1], sys.argv[2]
limit = int(sys.argv[3]) if len(sys.argv) > 3 else None
for split, prefix in (("train", "train"), ("val", "t10k")):
    x, y = idx(find(src, f"{prefix}-images-idx3-ubyte")), idx(find(src, f"{prefix}-labels-idx1-ubyte"))
    n = len(y) if split == "val" or limit is None else min(limit, len(y))
    for c in CLASSES:
        os.makedirs(os.path.join(root, split, c), exist_ok=True)
    for i in range(n):
        Image.fromarray(x[i]).save(os.path.join(root, split, CLASSES[y[i]], f"{i:05d}.png"))
    print(f"{split}: {n} images")
