"""Writes an ImageNet-like folder of JPEGs (500x375, smooth colour fields plus noise, quality 90)
for loader benchmarks: ROOT/train/classNNN/*.JPEG and ROOT/val/...

    python3 bench/make_jpeg_folder.py ROOT IMAGES CLASSES
"""
import numpy as np, os, sys
from PIL import Image
root, n, classes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = np.random.default_rng(0)
for split, count in (("train", n), ("val", max(classes, n // 10))):
    for i in range(count):
        c = i % classes
        d = os.path.join(root, split, f"class{c:03d}"); os.makedirs(d, exist_ok=True)
        h, w = 375, 500
        base = rng.random((h // 25, w // 25, 3)) * 255
        img = np.array(Image.fromarray(base.astype(np.uint8)).resize((w, h), Image.BICUBIC), dtype=np.float32)
        img += rng.normal(0, 12, img.shape)
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(os.path.join(d, f"{i:06d}.JPEG"), quality=90)
