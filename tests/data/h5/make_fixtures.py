#!/usr/bin/env python3
"""Writes the small HDF5 test files in this folder (listed, with what each tests, in README.md).

    python3 make_fixtures.py        # needs h5py >= 3 and numpy; rewrites every .h5 file here

"Micro" VGG16/VGG19 models have exactly Keras's layer names with tiny widths (2, 3, 4, 5, 6
channels in blocks 1-5), saved in the Keras-2 `save_weights` layout:
  root attrs  layer_names (vlen ASCII strings), backend, keras_version
  /<layer>    attr weight_names = ["<layer>/kernel:0", "<layer>/bias:0"] (empty float64 array
              for weightless layers: input_1, pools, flatten)
  /<layer>/<layer>/kernel:0   (kH, kW, Cin, Cout) for convs, (in, out) for Dense
  /<layer>/<layer>/bias:0     (out,)
Weights are seeded (numpy PCG64, seed from the layer name) and rounded to float16, so the
float16, float32 and float64 files hold exactly the same values. Biases are non-zero.
The array contents are deterministic; the HDF5 bytes may differ between h5py/HDF5 versions.

micro_vgg16_notop.h5 and micro_vgg16_top.h5 use h5py's default file layout, exactly as Keras
writes it. The other files use smaller group B-tree nodes (H5Pset_sym_k(4, 2) instead of
(16, 4)) to keep the folder small: old-style groups cost about 1.3 KB each by default, and a
VGG file has 30+ of them. Readers see the same structures, with more of them per group.
"""
import ctypes
import functools
import glob
import os
import struct
import zlib

import h5py
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
WIDTHS = [2, 3, 4, 5, 6]
CONVS_PER_BLOCK = {"vgg16": [2, 2, 3, 3, 3], "vgg19": [2, 2, 4, 4, 4]}
FC_WIDTH, CLASSES = 7, 5  # top: 32x32 input -> block5_pool 1x1x6 -> flatten 6


def rng_for(name):
    return np.random.default_rng(zlib.crc32(name.encode()))


def weights(layer, kernel_shape):
    """Kernel ~ N(0, 2/fan_in), bias ~ U(-1, 1) non-zero, both exactly float16-representable."""
    rng = rng_for(layer)
    fan_in = int(np.prod(kernel_shape[:-1]))
    kernel = (rng.standard_normal(kernel_shape) * np.sqrt(2.0 / fan_in)).astype(np.float16)
    bias = rng.uniform(-1, 1, kernel_shape[-1]).astype(np.float16)
    bias[bias == 0] = np.float16(0.5)
    return kernel.astype(np.float32), bias.astype(np.float32)


def micro_vgg(arch, top):
    """[(layer name, [(weight name, array)])] in model order."""
    layers = [("input_1", [])]
    cin = 3
    for b, (convs, width) in enumerate(zip(CONVS_PER_BLOCK[arch], WIDTHS), 1):
        for i in range(1, convs + 1):
            name = f"block{b}_conv{i}"
            k, bias = weights(name, (3, 3, cin, width))
            layers.append((name, [("kernel:0", k), ("bias:0", bias)]))
            cin = width
        layers.append((f"block{b}_pool", []))
    if top:
        layers.append(("flatten", []))
        for name, shape in [("fc1", (cin, FC_WIDTH)), ("fc2", (FC_WIDTH, FC_WIDTH)),
                            ("predictions", (FC_WIDTH, CLASSES))]:
            k, bias = weights(name, shape)
            layers.append((name, [("kernel:0", k), ("bias:0", bias)]))
    return layers


def replace(layers, layer, weight, array):
    return [(n, [(w, array if (n, w) == (layer, weight) else a) for w, a in ws]) for n, ws in layers]


def str_attr(obj, name, values, fixed):
    """A string attribute as Keras writes it: vlen ASCII (h5py 3) or fixed NULLPAD (h5py 2)."""
    if fixed:
        obj.attrs[name] = np.array([v.encode() for v in values]) if isinstance(values, list) \
            else np.bytes_(values.encode())
    else:
        obj.attrs.create(name, values, dtype=h5py.string_dtype("ascii"))


def split_like_keras(values, parts):
    """Keras's save_attributes_to_hdf5_group splits a too-large attribute with np.array_split
    into `name0`, `name1`, ...; we force `parts` pieces on a small list."""
    return [list(p) for p in np.array_split(np.array(values, dtype=object), parts)]


def write_keras2(path, layers, *, dtype=None, fixed=False, split_names=0, file=None,
                 chunked=False, rename=None):
    """Keras-2 `save_weights` layout. `rename` maps a weight's listed name to a different
    dataset name (a dangling weight_names entry)."""
    f = file or old_style_file(path, sym_k=(4, 2), istore_k=2 if chunked else None)
    names = [n for n, _ in layers]
    if split_names:
        for i, part in enumerate(split_like_keras(names, split_names)):
            str_attr(f, f"layer_names{i}", part, fixed)
    else:
        str_attr(f, "layer_names", names, fixed)
    str_attr(f, "backend", "tensorflow", fixed)
    str_attr(f, "keras_version", "2.13.1", fixed)
    # Keras writes the layer groups sorted by name.
    for name, ws in sorted(layers, key=lambda x: x[0]):
        g = f.create_group(name)
        if ws:
            str_attr(g, "weight_names", [f"{name}/{w}" for w, _ in ws], fixed)
        else:
            g.attrs["weight_names"] = np.array([], dtype=np.float64)
        for w, a in ws:
            ds_name = (rename or {}).get(f"{name}/{w}", f"{name}/{w}")
            a = a if dtype is None or a.dtype.kind != "f" else a.astype(dtype)
            opts = {"chunks": True} if chunked and w.startswith("kernel") else {}
            if opts and name == "block1_conv1":
                opts["compression"] = "gzip"
            g.create_dataset(ds_name, data=a, **opts)
    f.close()


@functools.cache
def hdf5_library():
    """h5py's own libhdf5 (the one its wheel bundles), for what h5py does not expose."""
    libs = glob.glob(os.path.join(os.path.dirname(h5py.__file__), os.pardir, "h5py.libs", "libhdf5-*.so*"))
    return ctypes.CDLL(libs[0])


def hdf5_call(name, plist, *args):
    """Sets a property h5py does not expose on a property list."""
    fn = getattr(hdf5_library(), name)
    fn.argtypes = [ctypes.c_int64] + [ctypes.c_uint] * len(args)
    assert fn(plist.id, *args) >= 0, name


def lookup3(data):
    fn = hdf5_library().H5_checksum_lookup3
    fn.argtypes, fn.restype = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint32], ctypes.c_uint32
    return fn(data, len(data), 0)


def fix_times(path, when=1_700_000_000):
    """Version-2 ("OHDR") object headers may store access/modification/change/birth times,
    which would make every run's bytes differ: set them to a fixed moment and redo the
    chunk's checksum. Only headers whose checksum verifies are touched."""
    b = bytearray(open(path, "rb").read())
    i = b.find(b"OHDR")
    while i >= 0:
        flags = b[i + 5]
        if b[i + 4] == 2 and flags & 0x20:
            width = 1 << (flags & 3)
            prefix = 6 + 16 + (4 if flags & 0x10 else 0)
            end = i + prefix + width + int.from_bytes(b[i + prefix:i + prefix + width], "little")
            if end + 4 <= len(b) and lookup3(bytes(b[i:end])) == int.from_bytes(b[end:end + 4], "little"):
                b[i + 6:i + 22] = struct.pack("<4I", *[when] * 4)
                b[end:end + 4] = lookup3(bytes(b[i:end])).to_bytes(4, "little")
        i = b.find(b"OHDR", i + 4)
    open(path, "wb").write(b)


def old_style_file(path, sym_k=None, istore_k=None, sizes=None):
    """Like h5py.File(path, 'w') (superblock v0, old-style groups), with optional B-tree
    sizes (group internal/leaf K, chunk index K) and address/length widths."""
    fcpl = h5py.h5p.create(h5py.h5p.FILE_CREATE)
    if sym_k:
        hdf5_call("H5Pset_sym_k", fcpl, *sym_k)
    if istore_k:
        hdf5_call("H5Pset_istore_k", fcpl, istore_k)
    if sizes:
        fcpl.set_sizes(*sizes)
    fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
    fapl.set_libver_bounds(h5py.h5f.LIBVER_EARLIEST, h5py.h5f.LIBVER_LATEST)
    return h5py.File(h5py.h5f.create(path.encode(), h5py.h5f.ACC_TRUNC, fcpl=fcpl, fapl=fapl))


def latest_file(path, max_compact_links=None):
    """h5py.File(path, 'w', libver='latest'): superblock v3, "OHDR" v2 object headers and
    new-style groups made of link messages. A new-style group with more than 8 links moves
    them to a fractal heap ("dense" storage); with `max_compact_links` the root keeps up to
    that many in its header. h5py exposes that setting only for non-root groups, so it is set
    on the file creation property list through h5py's libhdf5 directly."""
    fcpl = h5py.h5p.create(h5py.h5p.FILE_CREATE)
    fcpl.set_link_creation_order(h5py.h5p.CRT_ORDER_TRACKED | h5py.h5p.CRT_ORDER_INDEXED)
    fcpl.set_attr_creation_order(h5py.h5p.CRT_ORDER_TRACKED | h5py.h5p.CRT_ORDER_INDEXED)
    if max_compact_links:
        hdf5_call("H5Pset_link_phase_change", fcpl, max_compact_links, max_compact_links // 2)
    fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
    fapl.set_libver_bounds(h5py.h5f.LIBVER_LATEST, h5py.h5f.LIBVER_LATEST)
    fid = h5py.h5f.create(path.encode(), h5py.h5f.ACC_TRUNC, fcpl=fcpl, fapl=fapl)
    return h5py.File(fid)


def out(name):
    return os.path.join(HERE, name)


def keras_files():
    v16, v16top, v19 = micro_vgg("vgg16", False), micro_vgg("vgg16", True), micro_vgg("vgg19", False)
    write_keras2(out("micro_vgg16_notop.h5"), v16, file=h5py.File(out("micro_vgg16_notop.h5"), "w"))
    write_keras2(out("micro_vgg16_notop_f16.h5"), v16, dtype=np.float16)
    write_keras2(out("micro_vgg16_notop_f64.h5"), v16, dtype=np.float64)
    write_keras2(out("micro_vgg16_notop_bigendian.h5"), v16, dtype=">f4")
    write_keras2(out("micro_vgg16_notop_split_names.h5"), v16, split_names=3)
    write_keras2(out("micro_vgg16_notop_latest.h5"), v16,
                 file=latest_file(out("micro_vgg16_notop_latest.h5"), max_compact_links=64))
    write_keras2(out("micro_vgg16_notop_fixedstr.h5"), v16, fixed=True)
    write_keras2(out("micro_vgg16_top.h5"), v16top, file=h5py.File(out("micro_vgg16_top.h5"), "w"))
    write_keras2(out("micro_vgg19_notop.h5"), v19)

    nan = dict(v16)["block3_conv2"][0][1].copy()
    nan[1, 2, 0, 3] = np.nan
    write_keras2(out("bad_nan.h5"), replace(v16, "block3_conv2", "kernel:0", nan))
    inf = dict(v16)["block4_conv1"][1][1].copy()
    inf[2] = np.inf
    write_keras2(out("bad_inf.h5"), replace(v16, "block4_conv1", "bias:0", inf))
    k = dict(v16)["block2_conv1"][0][1]
    write_keras2(out("bad_int_kernel.h5"),
                 replace(v16, "block2_conv1", "kernel:0", np.round(k * 100).astype(np.int32)))
    write_keras2(out("bad_missing_layer.h5"), [l for l in v16 if l[0] != "block4_conv2"])
    write_keras2(out("bad_missing_bias.h5"),
                 [(n, ws[:1] if n == "block2_conv1" else ws) for n, ws in v16])
    write_keras2(out("bad_kernel_shape.h5"),
                 replace(v16, "block3_conv1", "kernel:0", weights("block3_conv1", (3, 3, 5, 4))[0]))
    write_keras2(out("bad_kernel_5x5.h5"),
                 replace(v16, "block1_conv1", "kernel:0", weights("block1_conv1", (5, 5, 3, 2))[0]))
    write_keras2(out("bad_weight_names_dangling.h5"), v16,
                 rename={"block1_conv2/kernel:0": "block1_conv2/kernel_1:0"})
    write_keras2(out("chunked.h5"), v16, chunked=True)
    write_keras2(out("other_network.h5"), resnet_like())
    write_keras3(out("micro_vgg16_top_k3.weights.h5"), v16top)
    write_keras3(out("micro_vgg16_top_k3_noname.weights.h5"), v16top, names=False)


def write_keras3(path, layers, *, names=True):
    """Keras 3 `save_weights("x.weights.h5")`: `/layers/<class>[_N]/vars/<i>`, keyed by a
    counter per layer class in model order. Keras >= 3.15 puts the layer name in the `vars`
    group's `name` attribute; older Keras 3 does not (`names=False`), and then only the
    counter tells which layer is which (`conv2d_10` sorts before `conv2d_2`)."""
    with old_style_file(path, sym_k=(4, 2)) as f:
        counters = {}
        group = f.create_group("layers")
        for name, ws in layers:
            cls = "conv2d" if "_conv" in name else "max_pooling2d" if "_pool" in name else \
                "dense" if ws else None
            if cls is None:
                continue
            n = counters.get(cls, 0)
            counters[cls] = n + 1
            v = group.create_group(cls if n == 0 else f"{cls}_{n}").create_group("vars")
            if names and ws:
                v.attrs.create("name", name, dtype=h5py.string_dtype("utf-8"))
            for i, (_, a) in enumerate(ws):
                v.create_dataset(str(i), data=a)


def resnet_like():
    """The first layers of a Keras ResNet50, tiny: a file that is valid but not a VGG."""
    def conv(name, shape):
        k, b = weights(name, shape)
        return (name, [("kernel:0", k), ("bias:0", b)])

    def bn(name, n):
        rng = rng_for(name)
        return (name, [(w, rng.uniform(0.5, 1.5, n).astype(np.float32))
                       for w in ["gamma:0", "beta:0", "moving_mean:0", "moving_variance:0"]])

    return [("input_1", []), ("conv1_pad", []), conv("conv1_conv", (7, 7, 3, 4)), bn("conv1_bn", 4),
            ("conv1_relu", []), ("pool1_pad", []), ("pool1_pool", []),
            conv("conv2_block1_1_conv", (1, 1, 4, 4)), bn("conv2_block1_1_bn", 4),
            ("conv2_block1_1_relu", [])]


def reader_files():
    # Compact layout: data stored inside the object header (only via the low-level API).
    with h5py.File(out("compact.h5"), "w") as f:
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_layout(h5py.h5d.COMPACT)
        dcpl.set_obj_track_times(False)
        data = np.arange(12, dtype="<f4").reshape(3, 4) / 4
        ds = h5py.h5d.create(f.id, b"compact", h5py.h5t.IEEE_F32LE, h5py.h5s.create_simple((3, 4)), dcpl=dcpl)
        ds.write(h5py.h5s.ALL, h5py.h5s.ALL, data)
        f["contiguous"] = data

    # 100 members with tiny B-tree nodes: a group B-tree three levels deep.
    with old_style_file(out("many_members.h5"), sym_k=(2, 2)) as f:
        g = f.create_group("many")
        for i in range(100):
            g[f"d{i:03d}"] = np.float32(i)

    # Element types and storage corner cases.
    with h5py.File(out("dtypes.h5"), "w") as f:
        special = np.array([1, -2, 65504, 2**-24, 2**-14, np.inf, -np.inf, np.nan, -0.0, 1 / 3], "<f2")
        f["f16"] = special
        f["f16_be"] = special.astype(">f2")
        f["f64_be"] = np.array([1.5, -2.25, 1e300], ">f8")
        f["i8"] = np.array([-1, 2], "i1")
        f["u16"] = np.array([1, 65535], "<u2")
        f["i64_be"] = np.array([-3], ">i8")
        f["scalar"] = np.float32(2.5)
        f["empty"] = np.zeros((0, 3), "<f4")
        f.create_dataset("unwritten", shape=(4,), dtype="<f4")
        f["compound"] = np.array([(1, 2.0)], dtype=[("a", "<i4"), ("b", "<f4")])
        f.create_dataset("vlen_seq", shape=(1,), dtype=h5py.vlen_dtype(np.int32))[0] = [1, 2, 3]
        f["strings"] = np.array([b"ab", b"cd"])

    # Attribute encodings.
    with h5py.File(out("attributes.h5"), "w") as f:
        f.attrs.create("vlen_utf8", ["caf\u00e9", "", "\u00fcber"], dtype=h5py.string_dtype("utf-8"))
        f.attrs.create("vlen_scalar", "tensorflow", dtype=h5py.string_dtype("ascii"))
        f.attrs["fixed_2d"] = np.array([[b"a", b"bb"], [b"ccc", b"d"]])
        tid = h5py.h5t.C_S1.copy()
        tid.set_size(6)
        for name, pad, value in [("nullterm", h5py.h5t.STR_NULLTERM, b"ab\0cd\0"),
                                 ("spacepad", h5py.h5t.STR_SPACEPAD, b"ab cd "),
                                 ("bad_utf8", h5py.h5t.STR_NULLPAD, b"ab\xff\0\0\0")]:
            t = tid.copy()
            t.set_strpad(pad)
            a = h5py.h5a.create(f.id, name.encode(), t, h5py.h5s.create(h5py.h5s.SCALAR))
            a.write(np.array(value, dtype="S6"))
        f.attrs["empty_f64"] = np.array([], dtype=np.float64)
        f.attrs["ints"] = np.array([1, 2], "<i4")
        f.attrs["long_name_" + "x" * 40] = np.bytes_(b"v")  # v1 attribute name padding

    # A user block: the superblock sits at offset 512, addresses are relative to it.
    with h5py.File(out("userblock.h5"), "w", userblock_size=512) as f:
        f["g/d"] = np.arange(5, dtype="<f4")
        f["g"].attrs.create("names", ["a", "b"], dtype=h5py.string_dtype("ascii"))

    # 4-byte addresses and lengths instead of 8.
    with old_style_file(out("small_offsets.h5"), sizes=(4, 4)) as f:
        f["g/d"] = np.arange(5, dtype="<f4")
        f["g"].attrs.create("names", ["a", "b"], dtype=h5py.string_dtype("ascii"))

    # Links we do not follow, and a committed (shared) datatype.
    with h5py.File(out("links.h5"), "w") as f:
        f["target"] = np.arange(3, dtype="<f4")
        f["soft"] = h5py.SoftLink("/target")
        f["external"] = h5py.ExternalLink("other.h5", "/x")
        f["hard"] = f["target"]
        f["shared_type"] = np.dtype("<f4")
        f.create_dataset("uses_shared_type", data=np.ones(2, "<f4"), dtype=f["shared_type"])

    # Dense (fractal heap) storage, which the reader reports as unsupported.
    with latest_file(out("dense.h5")) as f:
        g = f.create_group("many_links")
        for i in range(20):
            g.create_group(f"g{i:02d}")
        a = f.create_group("many_attrs")
        for i in range(20):
            a.attrs[f"a{i:02d}"] = np.int32(i)


if __name__ == "__main__":
    keras_files()
    reader_files()
    for name in ["micro_vgg16_notop_latest.h5", "dense.h5"]:
        fix_times(out(name))
    total = sum(os.path.getsize(p) for p in glob.glob(os.path.join(HERE, "*.h5")))
    print(f"wrote {len(glob.glob(os.path.join(HERE, '*.h5')))} files, {total} bytes")
