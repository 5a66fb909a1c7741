#!/usr/bin/env python3
"""Make the test data for keel's image loading (src/io/image.rs); see README.md here.

Writes small synthetic images in every colour mode and format keel reads, the arrays that
Keras's `load_img` gives for each (through Pillow), and a few files that must fail to load.
Deterministic: a fixed seed, and every file is written the same way on every run. Needs numpy
and Pillow; run it with the Pillow version README.md names, or expect different expected arrays.

    python tests/data/images/make_images.py
"""

import pathlib
import struct
import zlib

import numpy as np
import PIL
from PIL import Image

OUT = pathlib.Path(__file__).resolve().parent
RNG = np.random.default_rng(20240611)

# Keras's `load_img` interpolation names and the Pillow filters they map to.
INTERPOLATIONS = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR}

# Resize targets (height, width) for the 31x40 image, each chosen for a code path:
RESIZE_TARGETS_31x40 = [
    (50, 60),  # upscale both ways (nearest: 40/60 steps hit exact integers)
    (20, 27),  # downscale both by non-integer factors
    (45, 17),  # height up, width down
    (1, 1),  # everything into one pixel
    (5, 7),  # large downscale: wide antialiasing support
    (5, 38),  # height shrinks much more than width: Pillow runs the vertical pass first
    (12, 60),  # height down, width up: vertical pass first again
    (31, 20),  # width only
    (15, 40),  # height only
    (62, 80),  # exact 2x upscale
]
RESIZE_TARGETS_17x23 = [(9, 11), (40, 7), (17, 46)]


def smooth(h, w, c, hi=255):
    """Gradients in different directions per channel plus noise, as an (h, w, c) float array."""
    y, x = np.mgrid[0:h, 0:w]
    chans = []
    for i in range(c):
        ang = 0.7 + 1.9 * i
        g = (np.cos(ang) * x / max(w - 1, 1) + np.sin(ang) * y / max(h - 1, 1) + 1.0) / 2.5
        chans.append(g * hi + RNG.normal(0.0, hi / 12.0, (h, w)))
    return np.clip(np.stack(chans, axis=-1), 0, hi)


def u8(h, w, c):
    return np.rint(smooth(h, w, c)).astype(np.uint8)


def write_png(path, arr, color_type, depth, trns=None):
    """A PNG written by hand, for the 2- and 16-bit modes that Pillow cannot write, with a
    tRNS chunk holding `trns` (16-bit samples) if given."""
    h, w = arr.shape[:2]
    if depth < 8:  # pack each row's samples into bits, most significant first
        bits = np.unpackbits(arr.reshape(h, -1, 1).astype(np.uint8), axis=2)[..., 8 - depth :]
        rows = [np.packbits(bits[y].ravel()).tobytes() for y in range(h)]
    else:
        dtype = ">u2" if depth == 16 else "u1"
        rows = [np.ascontiguousarray(arr[y], dtype=dtype).tobytes() for y in range(h)]
    raw = b"".join(b"\x00" + row for row in rows)

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", w, h, depth, color_type, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
    if trns is not None:
        png += chunk(b"tRNS", struct.pack(">" + "H" * len(trns), *trns))
    png += chunk(b"IDAT", zlib.compress(raw, 9))
    path.write_bytes(png + chunk(b"IEND", b""))


def load_img(path, target_size=None, interpolation="nearest"):
    """Keras 3's `keras.utils.load_img(path, target_size=..., interpolation=...)`, colour mode
    rgb and keep_aspect_ratio False, written out: open, convert to RGB unless already RGB,
    resize to (width, height) when the size differs."""
    with open(path, "rb") as f:
        img = Image.open(f)
        img.load()
    if img.mode != "RGB":
        img = img.convert("RGB")
    if target_size is not None:
        width_height = (target_size[1], target_size[0])
        if img.size != width_height:
            img = img.resize(width_height, INTERPOLATIONS[interpolation])
    return np.asarray(img, dtype=np.uint8)


def image(arr, mode):
    """A Pillow image of `mode` holding `arr` (fromarray no longer takes a mode)."""
    if mode == "1":
        return Image.fromarray(arr.astype(bool))
    h, w = arr.shape[:2]
    data = np.ascontiguousarray(arr, dtype="<u2" if mode == "I;16" else "u1").tobytes()
    return Image.frombytes(mode, (w, h), data)


def palette(n):
    return RNG.integers(0, 256, (n, 3), dtype=np.uint8)


def make_images():
    """Write every test image; return the names of those keel must decode."""
    names = []

    def save(name, img, **kw):
        img.save(OUT / name, **kw)
        names.append(name)

    def hand_png(name, arr, color_type, depth, trns=None):
        write_png(OUT / name, arr, color_type, depth, trns)
        names.append(name)

    rgb_31x40 = u8(31, 40, 3)
    rgb = u8(17, 23, 3)
    save("rgb_31x40.png", image(rgb_31x40, "RGB"))
    save("rgb_17x23.png", image(rgb, "RGB"))
    # The same PNG under a JPEG name: the content decides the format, not the name.
    save("png_named_jpg_17x23.jpg", image(rgb, "RGB"), format="PNG")
    # EXIF orientation 6 ("rotate 90"): Pillow's open ignores it, so must keel.
    exif = Image.Exif()
    exif[0x0112] = 6
    save("rgb_exif_rotate_17x23.png", image(rgb, "RGB"), exif=exif)

    save("l_17x23.png", image(u8(17, 23, 1)[..., 0], "L"))
    save("la_17x23.png", image(u8(17, 23, 2), "LA"))
    rgba = u8(17, 23, 4)
    rgba[0, :, 3] = 0  # fully transparent row: its colour must survive, not be composited
    save("rgba_17x23.png", image(rgba, "RGBA"))

    # Palette images use only 40 of 256 entries (a short PLTE chunk).
    idx = (u8(17, 23, 1)[..., 0].astype(int) * 40 // 256).astype(np.uint8)
    p = image(idx, "P")
    p.putpalette(palette(40).tobytes())
    save("p_17x23.png", p)
    save("p_17x23.bmp", p)
    save("p_17x23.gif", p)
    p_trns = p.copy()
    trns = bytes(RNG.integers(0, 256, 40, dtype=np.uint8))
    save("p_trns_17x23.png", p_trns, transparency=trns)
    save("p_trns_17x23.gif", p_trns, transparency=int(idx[8, 11]))  # GIF: one transparent index

    # Low bit depths: 2-bit grey (samples scaled by 85), 4-bit palette.
    hand_png("l2_17x23.png", u8(17, 23, 1)[..., 0] // 64, 0, 2)
    p4 = image(idx // 3, "P")
    p4.putpalette(palette(16).tobytes())
    save("p4_17x23.png", p4, bits=4)
    bits = u8(17, 23, 1)[..., 0] > 128
    one = image(bits, "1")  # mode "1"
    save("bit1_17x23.png", one)
    save("bit1_17x23.bmp", one)
    save("bit1_17x23.tif", one)

    # 16-bit: grey spans 0..1023 so some samples are below 256 and most above; RGB(A) spans all.
    l16 = np.rint(smooth(17, 23, 1, hi=1023)[..., 0]).astype(np.uint16)
    save("l16_17x23.png", image(l16, "I;16"))
    save("l16_17x23.tif", image(l16, "I;16"))
    # With tRNS the `image` crate adds an alpha channel, Pillow still sees plain I;16.
    hand_png("l16_trns_17x23.png", l16, 0, 16, trns=[int(l16[3, 4])])
    hand_png("la16_17x23.png", np.rint(smooth(17, 23, 2, hi=65535)).astype(np.uint16), 4, 16)
    hand_png("rgb16_17x23.png", np.rint(smooth(17, 23, 3, hi=65535)).astype(np.uint16), 2, 16)
    hand_png("rgba16_17x23.png", np.rint(smooth(17, 23, 4, hi=65535)).astype(np.uint16), 6, 16)

    save("rgb_31x40.jpg", image(rgb_31x40, "RGB"), quality=90)  # 4:2:0 chroma
    save("rgb444_31x40.jpg", image(rgb_31x40, "RGB"), quality=90, subsampling=0)
    save("rgb_progressive_31x40.jpg", image(rgb_31x40, "RGB"), quality=90, progressive=True)
    save("l_17x23.jpg", image(u8(17, 23, 1)[..., 0], "L"), quality=90)
    save("cmyk_17x23.jpg", image(u8(17, 23, 4), "CMYK"), quality=90)  # Adobe-inverted

    save("rgb_17x23.bmp", image(rgb, "RGB"))
    save("rgba_17x23.bmp", image(rgba, "RGBA"))
    save("rgb_17x23.tif", image(rgb, "RGB"))
    save("rgba_17x23.tif", image(rgba, "RGBA"))
    save("l_17x23.tif", image(u8(17, 23, 1)[..., 0], "L"))
    save("cmyk_17x23.tif", image(u8(17, 23, 4), "CMYK"))
    save("rgb_lossless_17x23.webp", image(rgb, "RGB"), lossless=True)
    save("rgba_lossless_17x23.webp", image(rgba, "RGBA"), lossless=True)
    save("rgb_lossy_31x40.webp", image(rgb_31x40, "RGB"), quality=90)
    return names


def make_bad_files():
    """Files that must fail to load, each with an error naming the file."""
    png = (OUT / "rgb_31x40.png").read_bytes()
    (OUT / "bad_truncated.png").write_bytes(png[: len(png) // 2])
    jpg = (OUT / "rgb_31x40.jpg").read_bytes()
    (OUT / "bad_truncated.jpg").write_bytes(jpg[: len(jpg) * 3 // 4])  # cut inside the scan
    (OUT / "bad_empty.png").write_bytes(b"")
    (OUT / "bad_garbage.jpg").write_bytes(RNG.integers(0, 256, 300, dtype=np.uint8).tobytes())
    (OUT / "bad_text.txt").write_bytes(b"This is a text file, not an image.\n")


def main():
    for old in OUT.glob("*.npy"):
        old.unlink()
    names = make_images()
    for name in names:
        np.save(OUT / f"{name}.npy", load_img(OUT / name))
    for name, targets in [
        ("rgb_31x40.png", RESIZE_TARGETS_31x40),
        ("rgb_17x23.png", RESIZE_TARGETS_17x23),
    ]:
        for interp in INTERPOLATIONS:
            for h, w in targets:
                out = load_img(OUT / name, (h, w), interp)
                np.save(OUT / f"{name}.{interp}_{h}x{w}.npy", out)
    make_bad_files()
    print(f"wrote {len(names)} images and their expected arrays with Pillow {PIL.__version__}")


if __name__ == "__main__":
    main()
