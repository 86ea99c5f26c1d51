#!/usr/bin/env python3
"""Writes the generated DICOM corpus: small files, each named for the one thing it tests, that
cover what real-world files showed the decoder gets wrong (issue #28): RLE and uncompressed
YBR_FULL / YBR_FULL_422, JPEG-LS lossless and near-lossless at 8/12/16 bits in every interleave
mode, JPEG baseline/extended/lossless, frames split over several fragments (with and without a
basic offset table), palettes whose descriptor disagrees with their data, segmented palettes,
Bits Allocated 1/32/64 and float pixel data, deeply nested sequences, truncated streams (which a
decoder must refuse, never fill in), big-endian, deflated and odd-length encodings.

Usage: python3 tools/dicom_corpus_make.py OUT_DIR
Then:  python3 tools/dicom_corpus.py --scanside target/release/scanside generated=OUT_DIR

Made with pydicom's writers and encoders (pydicom, pylibjpeg-openjpeg) and dcmtk's dcmcjpeg,
dcmcjpls, dcmcrle and dcmconv (tools/setup.sh installs both), from seeded synthetic images and a
few of pydicom's test files. Deterministic: the same bytes on every run (UIDs derive from the
file's name). OUT_DIR/README.md lists every file and what it tests.
"""
import hashlib
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import warnings

import numpy as np

try:
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate, encapsulate_extended, generate_frames
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset, write_file_meta_info
    from pydicom.pixels import convert_color_space, pack_bits
    from pydicom.uid import (UID, ExplicitVRBigEndian,
                             ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000,
                             JPEG2000Lossless, RLELossless, generate_uid)
except ImportError as e:  # pragma: no cover
    sys.exit(f"dicom_corpus_make: {e}; pip install pydicom pydicom-data pylibjpeg "
             "pylibjpeg-libjpeg pylibjpeg-openjpeg pylibjpeg-rle")

SC = "1.2.840.10008.5.1.4.1.1.7"            # Secondary Capture
MF_GRAY_WORD = "1.2.840.10008.5.1.4.1.1.7.3"  # Multi-frame Grayscale Word SC
SEG = "1.2.840.10008.5.1.4.1.1.66.4"         # Segmentation
PMAP = "1.2.840.10008.5.1.4.1.1.30"          # Parametric Map
RTDOSE = "1.2.840.10008.5.1.4.1.1.481.2"
ROOT = "1.2.826.0.1.3680043.8.498."          # pydicom's UID root

OUT = None
MADE = []  # (name, what it tests)


# --- images -------------------------------------------------------------------------------

def gray(rows, cols, bits, seed, signed=False, frames=1):
    """A seeded image with structure (gradients, discs, edges) and some noise, filling the
    range of `bits` (two's complement range when signed)."""
    rng = np.random.default_rng(seed)
    out = []
    for f in range(frames):
        y, x = np.mgrid[0:rows, 0:cols].astype(np.float64)
        img = 0.45 * x / max(cols - 1, 1) + 0.25 * y / max(rows - 1, 1)
        for _ in range(4):
            cy, cx, r = rng.uniform(0, rows), rng.uniform(0, cols), rng.uniform(1, max(rows, cols) / 3 + 1)
            img += rng.uniform(-0.3, 0.3) * (((y - cy) ** 2 + (x - cx) ** 2) < r * r)
        img += rng.normal(0, 0.03, img.shape) + 0.05 * f
        img = (img - img.min()) / (np.ptp(img) or 1.0)
        top = 2 ** bits - 1
        v = np.round(img * top).astype(np.int64)
        if signed:
            v -= 2 ** (bits - 1)
        out.append(v)
    arr = np.stack(out) if frames > 1 else out[0]
    return arr


def rgb(rows, cols, seed, frames=1):
    chans = [gray(rows, cols, 8, seed * 10 + c, frames=frames) for c in range(3)]
    return np.stack(chans, axis=-1).astype(np.uint8)


def dtype_for(bits_allocated, signed):
    return {8: np.int8 if signed else np.uint8, 16: np.int16 if signed else np.uint16,
            32: np.int32 if signed else np.uint32}[bits_allocated]


# --- data sets and files ------------------------------------------------------------------

def uid(name, what="sop"):
    return UID(ROOT + str(int(hashlib.sha256(f"{name}/{what}".encode()).hexdigest()[:24], 16)))


def dataset(name, rows, cols, *, spp=1, pi="MONOCHROME2", ba=8, bs=None, signed=False,
            frames=1, sop=SC, ts=ExplicitVRLittleEndian, planar=0):
    """A Secondary Capture data set with the image pixel module filled in (no pixel data)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop
    meta.MediaStorageSOPInstanceUID = uid(name)
    meta.TransferSyntaxUID = ts
    meta.ImplementationClassUID = ROOT + "1"
    meta.ImplementationVersionName = "scanside_corpus"
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "OT"
    ds.PatientName = "Corpus^Generated"
    ds.PatientID = "scanside-corpus"
    ds.StudyInstanceUID = uid("study")
    ds.SeriesInstanceUID = uid(name, "series")
    ds.ConversionType = "SYN"
    ds.InstanceNumber = 1
    ds.SamplesPerPixel = spp
    ds.PhotometricInterpretation = pi
    if spp > 1:
        ds.PlanarConfiguration = planar
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated = ba
    ds.BitsStored = bs or ba
    ds.HighBit = (bs or ba) - 1
    ds.PixelRepresentation = 1 if signed else 0
    return ds


def native(ds, arr):
    """Store `arr` as native pixel data in the data set's own layout (planar configuration
    honoured); OW for 16-bit and wider, OB otherwise."""
    ba = int(ds.BitsAllocated)
    signed = int(ds.PixelRepresentation) == 1
    a = np.asarray(arr)
    if int(ds.SamplesPerPixel) > 1 and int(ds.get("PlanarConfiguration", 0)) == 1:
        a = np.moveaxis(a, -1, -3)  # (frames,) samples, rows, cols
    data = np.ascontiguousarray(a.astype(np.dtype(dtype_for(ba, signed)).newbyteorder("<"))).tobytes()
    ds.PixelData = data + (b"\0" if len(data) % 2 else b"")
    ds["PixelData"].VR = "OB" if ba <= 8 else "OW"
    return ds


def path_of(name):
    return os.path.join(OUT, name)


def save(ds, name, what):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.save_as(path_of(name), enforce_file_format=True)
    MADE.append((name, what))


def encoded(ds):
    """The data set's elements (no preamble, no file meta) in its transfer syntax's encoding."""
    ts = ds.file_meta.TransferSyntaxUID
    fp = DicomBytesIO()
    fp.is_little_endian = ts != ExplicitVRBigEndian
    fp.is_implicit_VR = ts == ImplicitVRLittleEndian
    write_dataset(fp, ds)
    return fp.getvalue()


def raw_file(name, what, meta, *chunks):
    """A file assembled by hand: preamble, file meta from `meta`, then the byte chunks."""
    fp = DicomBytesIO()
    fp.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(fp, meta, enforce_standard=True)
    body = fp.getvalue() + b"".join(chunks)
    with open(path_of(name), "wb") as f:
        f.write(body)
    MADE.append((name, what))


def element_le(group, elem, vr, value):
    """One explicit-VR little-endian element (OB/OW/SQ/UN/UT long form)."""
    if vr in ("OB", "OW", "OF", "OD", "SQ", "UN", "UT", "OL"):
        return struct.pack("<HH2sHI", group, elem, vr.encode(), 0, len(value)) + value
    return struct.pack("<HH2sH", group, elem, vr.encode(), len(value)) + value


def frames_of(path):
    """The encapsulated frames of a compressed file (one bytes object per frame)."""
    ds = pydicom.dcmread(path)
    n = int(ds.get("NumberOfFrames", 1) or 1)
    return ds, list(generate_frames(ds.PixelData, number_of_frames=n))


def dcmtk(tool, *args):
    proc = subprocess.run([tool, *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{tool} {' '.join(args)}: {proc.stderr.strip() or proc.stdout.strip()}")


def tmp_native(ds, arr, tag):
    """Writes a native copy for dcmtk to compress, into the scratch folder."""
    native(ds, arr)
    p = os.path.join(SCRATCH, tag + ".dcm")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.save_as(p, enforce_file_format=True)
    return p


def with_frames(src_path, name, what, frames, fragments_per_frame=1, has_bot=True, extended=False,
                edit=None):
    """Re-encapsulates a compressed file's frames: split into fragments, with or without a
    basic offset table, or with an extended offset table."""
    ds = pydicom.dcmread(src_path)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = uid(name)
    if extended:
        data, offsets, lengths = encapsulate_extended(frames)
        ds.PixelData = data
        ds.ExtendedOffsetTable = offsets
        ds.ExtendedOffsetTableLengths = lengths
    else:
        ds.PixelData = encapsulate(frames, fragments_per_frame=fragments_per_frame, has_bot=has_bot)
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    if edit:
        edit(ds)
    save(ds, name, what)


# --- the corpus ---------------------------------------------------------------------------

def sanity():
    ds = dataset("native_gray8", 48, 40)
    save(native(ds, gray(48, 40, 8, 1)), "native_gray8.dcm", "baseline: 8-bit MONOCHROME2, explicit LE")
    ds = dataset("native_gray16_signed_rescale", 40, 48, ba=16, bs=16, signed=True)
    ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = "0.5", "-1024", "HU"
    ds.WindowCenter, ds.WindowWidth = "40", "400"
    save(native(ds, gray(40, 48, 16, 2, signed=True)), "native_gray16_signed_rescale_window.dcm",
         "16-bit signed with rescale slope/intercept and a window")
    ds = dataset("native_gray12_in16_highbits_set", 40, 40, ba=16, bs=12)
    arr = gray(40, 40, 12, 3) | (np.random.default_rng(3).integers(0, 16, (40, 40)) << 12)
    save(native(ds, arr), "native_gray12_in16_garbage_high_bits.dcm",
         "12 bits stored in 16 with the unused high bits set (must be masked off)")
    ds = dataset("native_gray12_signed_in16", 40, 40, ba=16, bs=12, signed=True)
    arr = gray(40, 40, 12, 4, signed=True) & 0x0FFF  # sign bit 11, upper bits clear
    save(native(ds, arr), "native_gray12_signed_in16_sign_extend.dcm",
         "12-bit signed stored in 16 bits with the upper bits clear (sign must be extended from bit 11)")
    ds = dataset("native_mono1", 32, 36, pi="MONOCHROME1", ba=16, bs=10)
    save(native(ds, gray(32, 36, 10, 5)), "native_mono1_10bit.dcm", "MONOCHROME1, 10 bits in 16")
    for planar in (0, 1):
        ds = dataset(f"native_rgb_planar{planar}", 30, 34, spp=3, pi="RGB", planar=planar)
        save(native(ds, rgb(30, 34, 6)), f"native_rgb_planar{planar}.dcm",
             f"RGB, planar configuration {planar}")
    ds = dataset("native_multiframe_gray16", 24, 20, ba=16, bs=16, frames=3, sop=MF_GRAY_WORD)
    save(native(ds, gray(24, 20, 16, 7, frames=3)), "native_multiframe3_gray16.dcm",
         "three frames of 16-bit gray (first frame compared)")
    ds = dataset("native_implicit", 32, 32, ba=16, bs=12, ts=ImplicitVRLittleEndian)
    save(native(ds, gray(32, 32, 12, 8)), "native_implicit_vr_gray12.dcm", "implicit VR little endian")
    ds = dataset("native_trailing_bytes", 20, 20)
    native(ds, gray(20, 20, 8, 9))
    ds.PixelData = ds.PixelData + b"\x55" * 64
    save(ds, "native_gray8_trailing_bytes.dcm", "pixel data 64 bytes longer than the image (ignored)")


def ybr():
    arr = rgb(32, 36, 11)
    ybr_full = convert_color_space(arr, "RGB", "YBR_FULL")
    for planar in (0, 1):
        ds = dataset(f"native_ybr_full_p{planar}", 32, 36, spp=3, pi="YBR_FULL", planar=planar)
        save(native(ds, ybr_full), f"native_ybr_full_planar{planar}.dcm",
             f"uncompressed YBR_FULL, planar configuration {planar}")
    # YBR_FULL_422 native: per pair of pixels Y1 Y2 Cb Cr (PS3.3 C.7.6.3.1.2), even columns.
    rows, cols = 32, 36
    y = ybr_full[..., 0]
    cb = ybr_full[..., 1].reshape(rows, cols // 2, 2).astype(np.float64).mean(-1).round().astype(np.uint8)
    cr = ybr_full[..., 2].reshape(rows, cols // 2, 2).astype(np.float64).mean(-1).round().astype(np.uint8)
    packed = np.stack([y[:, 0::2], y[:, 1::2], cb, cr], axis=-1).astype(np.uint8).tobytes()
    ds = dataset("native_ybr_full_422", rows, cols, spp=3, pi="YBR_FULL_422")
    ds.PixelData = packed
    ds["PixelData"].VR = "OB"
    save(ds, "native_ybr_full_422.dcm", "uncompressed YBR_FULL_422 (4:2:2 subsampled, 2 bytes a pixel)")
    # RLE with YBR_FULL: pydicom's RLE encoder, planar configuration 0 and 1 in the header.
    for planar in (0, 1):
        name = f"rle_ybr_full_planar{planar}.dcm"
        ds = dataset(name, 32, 36, spp=3, pi="YBR_FULL", planar=0)
        native(ds, ybr_full)
        ds.compress(RLELossless, ybr_full, encoding_plugin="pydicom", generate_instance_uid=False)
        ds.PlanarConfiguration = planar
        save(ds, name, f"RLE lossless, YBR_FULL, planar configuration {planar} in the header")
    name = "rle_rgb_planar0.dcm"
    ds = dataset(name, 32, 36, spp=3, pi="RGB")
    native(ds, arr)
    ds.compress(RLELossless, arr, encoding_plugin="pydicom", generate_instance_uid=False)
    save(ds, name, "RLE lossless RGB (control for the YBR_FULL files)")


def rle():
    for bits, signed in ((8, False), (16, False), (16, True)):
        name = f"rle_gray{bits}{'_signed' if signed else ''}.dcm"
        ds = dataset(name, 40, 44, ba=bits, bs=bits, signed=signed)
        arr = gray(40, 44, bits, 20 + bits, signed=signed)
        native(ds, arr)
        ds.compress(RLELossless, arr.astype(dtype_for(bits, signed)), encoding_plugin="pydicom",
                    generate_instance_uid=False)
        save(ds, name, f"RLE lossless, {bits}-bit{' signed' if signed else ''} gray")
    # Frames split over fragments: pydicom's encoder writes one fragment a frame; re-encapsulate.
    name = "rle_gray16_2frames"
    ds = dataset(name, 40, 44, ba=16, bs=16, frames=2, sop=MF_GRAY_WORD)
    arr = gray(40, 44, 16, 24, frames=2).astype(np.uint16)
    native(ds, arr)
    ds.compress(RLELossless, arr, encoding_plugin="pydicom", generate_instance_uid=False)
    src = os.path.join(SCRATCH, "rle_2frames.dcm")
    ds.save_as(src, enforce_file_format=True)
    _, frames = frames_of(src)
    with_frames(src, "rle_gray16_2frames_one_fragment_each.dcm", "RLE, two frames, one fragment each (control)", frames)
    with_frames(src, "rle_gray16_2frames_3fragments_each_bot.dcm",
                "RLE, two frames split over three fragments each, basic offset table", frames, 3, True)
    with_frames(src, "rle_gray16_2frames_3fragments_each_no_bot.dcm",
                "RLE, two frames split over three fragments each, no basic offset table", frames, 3, False)
    with_frames(src, "rle_gray16_2frames_extended_offset_table.dcm",
                "RLE, two frames, extended offset table (empty basic offset table)", frames, extended=True)
    name = "rle_gray8_1frame"
    ds = dataset(name, 40, 44)
    arr = gray(40, 44, 8, 25).astype(np.uint8)
    native(ds, arr)
    ds.compress(RLELossless, arr, encoding_plugin="pydicom", generate_instance_uid=False)
    src = os.path.join(SCRATCH, "rle_1frame.dcm")
    ds.save_as(src, enforce_file_format=True)
    _, frames = frames_of(src)
    with_frames(src, "rle_gray8_1frame_4fragments_no_bot.dcm",
                "RLE, one frame split over four fragments, no basic offset table", frames, 4, False)
    with_frames(src, "rle_gray8_1frame_4fragments_bot.dcm",
                "RLE, one frame split over four fragments, basic offset table", frames, 4, True)
    return src


def jpeg_ls():
    """dcmcjpls: lossless and near-lossless, 8/12/16-bit gray (unsigned and signed) and 8-bit
    colour in each interleave mode."""
    for bits, ba, signed in ((8, 8, False), (12, 16, False), (16, 16, False), (12, 16, True), (16, 16, True)):
        tag = f"gray{bits}{'_signed' if signed else ''}"
        ds = dataset("jls_" + tag, 40, 44, ba=ba, bs=bits, signed=signed)
        src = tmp_native(ds, gray(40, 44, bits, 30 + bits, signed=signed), "jls_" + tag)
        # dcmcjpls refuses near-lossless for signed data.
        for mode, args in (("lossless", ["+el"]),) + (() if signed else (("near2", ["+en", "+md", "2"]),)):
            name = f"jpegls_{mode}_{tag}.dcm"
            dcmtk("dcmcjpls", *args, "+un", src, path_of(name))
            MADE.append((name, f"JPEG-LS {'lossless' if mode == 'lossless' else 'near-lossless (NEAR=2)'}, "
                               f"{bits}-bit{' signed' if signed else ''} gray"))
    ds = dataset("jls_rgb", 32, 36, spp=3, pi="RGB")
    src = tmp_native(ds, rgb(32, 36, 33), "jls_rgb")
    for mode, args in (("lossless", ["+el"]), ("near3", ["+en", "+md", "3"])):
        for inter, flag in (("none", "+in"), ("line", "+il"), ("sample", "+is")):
            name = f"jpegls_{mode}_rgb8_interleave_{inter}.dcm"
            dcmtk("dcmcjpls", *args, flag, "+un", src, path_of(name))
            MADE.append((name, f"JPEG-LS {mode}, 8-bit RGB, interleave mode {inter}"))
    ds = dataset("jls_rgb12", 32, 36, spp=3, pi="RGB", ba=16, bs=12)
    src = tmp_native(ds, rgb(32, 36, 34).astype(np.uint16) * 16 + 7, "jls_rgb12")
    for mode, args in (("lossless", ["+el"]), ("near2", ["+en", "+md", "2"])):
        for inter, flag in (("none", "+in"), ("line", "+il"), ("sample", "+is")):
            name = f"jpegls_{mode}_rgb12_interleave_{inter}.dcm"
            dcmtk("dcmcjpls", *args, flag, "+un", src, path_of(name))
            MADE.append((name, f"JPEG-LS {mode}, 12-bit RGB (16 allocated), interleave mode {inter}"))
    # A real CT (pydicom's CT_small.dcm, 16-bit signed), lossless.
    ct = get_testdata_file("CT_small.dcm")
    dcmtk("dcmcjpls", "+el", "+un", ct, path_of("jpegls_lossless_ct_small_signed16.dcm"))
    MADE.append(("jpegls_lossless_ct_small_signed16.dcm", "JPEG-LS lossless of pydicom's CT_small.dcm (signed 16-bit)"))


def jpeg():
    """dcmcjpeg: baseline colour in each subsampling, extended 12-bit, lossless process 14."""
    ds = dataset("jpg_rgb", 48, 52, spp=3, pi="RGB")
    src_rgb = tmp_native(ds, rgb(48, 52, 40), "jpg_rgb")
    for tag, flags, what in (("ybr_full_422", ["+s2"], "YBR_FULL_422 (4:2:2)"),
                             ("ybr_full_444", ["+s4"], "YBR_FULL (4:4:4)"),
                             ("ybr_full_422_as_full", ["+n2"], "4:2:2 subsampling labelled YBR_FULL"),
                             ("ybr_411", ["+np"], "4:1:1 subsampling labelled YBR_FULL_422"),
                             ("rgb", ["+cr"], "RGB components (no colour transform)")):
        name = f"jpeg_baseline_{tag}.dcm"
        dcmtk("dcmcjpeg", "+eb", *flags, "+un", src_rgb, path_of(name))
        MADE.append((name, f"JPEG baseline, 8-bit colour, {what}"))
    ds = dataset("jpg_rgb_odd", 33, 45, spp=3, pi="RGB")
    src = tmp_native(ds, rgb(33, 45, 41), "jpg_rgb_odd")
    dcmtk("dcmcjpeg", "+eb", "+s2", "+un", src, path_of("jpeg_baseline_ybr_full_422_odd_size_33x45.dcm"))
    MADE.append(("jpeg_baseline_ybr_full_422_odd_size_33x45.dcm", "JPEG baseline YBR_FULL_422, odd rows and columns (chroma edge)"))
    rgb_file = get_testdata_file("SC_rgb.dcm")
    dcmtk("dcmcjpeg", "+eb", "+s2", "+un", rgb_file, path_of("jpeg_baseline_ybr_full_422_sc_rgb.dcm"))
    MADE.append(("jpeg_baseline_ybr_full_422_sc_rgb.dcm", "JPEG baseline YBR_FULL_422 of pydicom's SC_rgb.dcm"))
    for bits in (8, 12):
        ds = dataset(f"jpg_gray{bits}", 48, 52, ba=8 if bits == 8 else 16, bs=bits)
        src = tmp_native(ds, gray(48, 52, bits, 42 + bits), f"jpg_gray{bits}")
        name = f"jpeg_extended_gray{bits}.dcm"
        dcmtk("dcmcjpeg", "+ee", "+un", src, path_of(name))
        MADE.append((name, f"JPEG extended (process 2/4), {bits}-bit gray"))
    dcmtk("dcmcjpeg", "+ee", "+un", get_testdata_file("MR_small.dcm"), path_of("jpeg_extended_mr_small_12bit.dcm"))
    MADE.append(("jpeg_extended_mr_small_12bit.dcm", "JPEG extended 12-bit of pydicom's MR_small.dcm"))
    for bits, ba in ((8, 8), (12, 16), (16, 16)):
        ds = dataset(f"jpgll_gray{bits}", 40, 44, ba=ba, bs=bits)
        src = tmp_native(ds, gray(40, 44, bits, 50 + bits), f"jpgll_gray{bits}")
        name = f"jpeg_lossless_sv1_gray{bits}.dcm"
        dcmtk("dcmcjpeg", "+e1", "+un", src, path_of(name))
        MADE.append((name, f"JPEG lossless process 14 selection value 1, {bits}-bit gray"))
    for sv in (2, 4, 6, 7):
        name = f"jpeg_lossless_p14_sv{sv}_gray12.dcm"
        dcmtk("dcmcjpeg", "+el", "+sv", str(sv), "+un", os.path.join(SCRATCH, "jpgll_gray12.dcm"), path_of(name))
        MADE.append((name, f"JPEG lossless process 14, predictor (selection value) {sv}, 12-bit gray"))
    dcmtk("dcmcjpeg", "+e1", "+un", src_rgb, path_of("jpeg_lossless_sv1_rgb8.dcm"))
    MADE.append(("jpeg_lossless_sv1_rgb8.dcm", "JPEG lossless SV1, 8-bit RGB"))
    dcmtk("dcmcjpeg", "+ep", "+un", os.path.join(SCRATCH, "jpg_gray8.dcm"), path_of("jpeg_progressive_gray8.dcm"))
    MADE.append(("jpeg_progressive_gray8.dcm", "JPEG full progression (retired process 10/12), 8-bit gray"))


def fragments():
    """JPEG frames split over several fragments, with and without a basic offset table."""
    made = {}
    for kind, flags, bits in (("baseline", ["+eb"], 8), ("extended", ["+ee"], 12),
                              ("lossless_sv1", ["+e1"], 16)):
        ds = dataset(f"frag_{kind}", 40, 48, ba=8 if bits == 8 else 16, bs=bits, frames=3, sop=MF_GRAY_WORD)
        src = tmp_native(ds, gray(40, 48, bits, 60 + bits, frames=3), f"frag_{kind}_native")
        comp = os.path.join(SCRATCH, f"frag_{kind}.dcm")
        dcmtk("dcmcjpeg", *flags, "+un", src, comp)
        _, frames = frames_of(comp)
        made[kind] = (comp, frames)
        with_frames(comp, f"jpeg_{kind}_3frames_3fragments_each_bot.dcm",
                    f"JPEG {kind}, three frames, each split over three fragments, basic offset table", frames, 3, True)
        with_frames(comp, f"jpeg_{kind}_3frames_3fragments_each_no_bot.dcm",
                    f"JPEG {kind}, three frames, each split over three fragments, no basic offset table", frames, 3, False)
        with_frames(comp, f"jpeg_{kind}_3frames_one_fragment_each_no_bot.dcm",
                    f"JPEG {kind}, three frames, one fragment each, no basic offset table", frames, 1, False)
    comp, frames = made["extended"]
    with_frames(comp, "jpeg_extended_3frames_extended_offset_table.dcm",
                "JPEG extended, three frames, extended offset table", frames, extended=True)
    # dcmtk's own fragmenting: 1 KiB fragments, empty offset table.
    dcmtk("dcmcjpeg", "+ee", "+fs", "1", "-ot", "+un", os.path.join(SCRATCH, "frag_extended_native.dcm"),
          path_of("jpeg_extended_3frames_dcmtk_1k_fragments_no_bot.dcm"))
    MADE.append(("jpeg_extended_3frames_dcmtk_1k_fragments_no_bot.dcm",
                 "JPEG extended, three frames, dcmcjpeg 1 KiB fragments, empty offset table"))
    ds = dataset("frag_single", 64, 64, ba=16, bs=12)
    src = tmp_native(ds, gray(64, 64, 12, 70), "frag_single_native")
    comp = os.path.join(SCRATCH, "frag_single.dcm")
    dcmtk("dcmcjpeg", "+ee", "+un", src, comp)
    _, frames = frames_of(comp)
    with_frames(comp, "jpeg_extended_1frame_4fragments_no_bot.dcm",
                "JPEG extended 12-bit, one frame split over four fragments, no basic offset table", frames, 4, False)
    # JPEG-LS frames split over fragments.
    ds = dataset("frag_jls", 40, 48, ba=16, bs=16, frames=2, sop=MF_GRAY_WORD)
    src = tmp_native(ds, gray(40, 48, 16, 72, frames=2), "frag_jls_native")
    comp = os.path.join(SCRATCH, "frag_jls.dcm")
    dcmtk("dcmcjpls", "+el", "+un", src, comp)
    _, frames = frames_of(comp)
    with_frames(comp, "jpegls_lossless_2frames_3fragments_each_no_bot.dcm",
                "JPEG-LS lossless, two frames split over three fragments each, no basic offset table", frames, 3, False)
    with_frames(comp, "jpegls_lossless_2frames_3fragments_each_bot.dcm",
                "JPEG-LS lossless, two frames split over three fragments each, basic offset table", frames, 3, True)
    return made


def jpeg2000():
    out = {}
    for name, ts, kw, what in (("j2k_lossless_gray16.dcm", JPEG2000Lossless, {}, "JPEG 2000 lossless, 16-bit gray"),
                               ("j2k_lossy_gray12.dcm", JPEG2000, {"j2k_cr": [10]}, "JPEG 2000 lossy (ratio 10), 12-bit gray")):
        bits = 16 if "16" in name else 12
        ds = dataset(name, 48, 52, ba=16, bs=bits)
        arr = gray(48, 52, bits, 80 + bits).astype(np.uint16)
        native(ds, arr)
        ds.compress(ts, arr, encoding_plugin="pylibjpeg", generate_instance_uid=False, **kw)
        save(ds, name, what)
        out[name] = path_of(name)
    ds = dataset("j2k_rgb", 40, 44, spp=3, pi="RGB")
    arr = rgb(40, 44, 85)
    native(ds, arr)
    ds.compress(JPEG2000Lossless, arr, encoding_plugin="pylibjpeg", generate_instance_uid=False)
    save(ds, "j2k_lossless_rgb8_ybr_rct.dcm", "JPEG 2000 lossless colour (YBR_RCT)")
    _, frames = frames_of(out["j2k_lossless_gray16.dcm"])
    with_frames(out["j2k_lossless_gray16.dcm"], "j2k_lossless_gray16_1frame_3fragments_no_bot.dcm",
                "JPEG 2000 lossless, one frame split over three fragments, no basic offset table", frames, 3, False)
    return out


def palettes():
    rows, cols = 32, 40
    idx = (gray(rows, cols, 8, 90)).astype(np.uint8)
    ramp = np.arange(256)
    red = ((ramp * 257) & 0xFFFF).astype(np.uint16)
    green = (((255 - ramp) * 257) & 0xFFFF).astype(np.uint16)
    blue = ((np.abs(128 - ramp) * 2 * 257).clip(0, 65535)).astype(np.uint16)

    def pal(name, what, desc, r, g, b, data=idx, bits_entry=16, segmented=False):
        ds = dataset(name, rows, cols, pi="PALETTE COLOR")
        native(ds, data)
        for colour, lut in (("Red", r), ("Green", g), ("Blue", b)):
            setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", list(desc))
            ds[f"{colour}PaletteColorLookupTableDescriptor"].VR = "US"
            if segmented:
                setattr(ds, f"Segmented{colour}PaletteColorLookupTableData", np.asarray(lut, "<u2").tobytes())
                ds[f"Segmented{colour}PaletteColorLookupTableData"].VR = "OW"
            else:
                raw = np.asarray(lut, "<u2").tobytes() if bits_entry == 16 else np.asarray(lut, np.uint8).tobytes()
                setattr(ds, f"{colour}PaletteColorLookupTableData", raw + (b"\0" if len(raw) % 2 else b""))
                ds[f"{colour}PaletteColorLookupTableData"].VR = "OW"
        save(ds, name, what)

    pal("palette_256_entries.dcm", "PALETTE COLOR, 256 16-bit entries (control)", (256, 0, 16), red, green, blue)
    pal("palette_16bit_descriptor_128_data_256.dcm",
        "PALETTE COLOR, 16-bit entries, descriptor says 128 entries but the data holds 256 (ambiguous)",
        (128, 0, 16), red, green, blue)
    small = (idx // 24).astype(np.uint8)  # 0..10
    pal("palette_16bit_descriptor_11_data_22.dcm",
        "PALETTE COLOR, 16-bit entries, descriptor says 11 entries but the data holds 22 (ambiguous)",
        (11, 0, 16), red[:22], green[:22], blue[:22], data=small)
    # What real files do (highdicom's label maps, issue #28): 8-bit entries, one byte each, so
    # the OW data holds half as many 16-bit words as the descriptor has entries.
    small22 = (idx // 12).astype(np.uint8)  # 0..21
    pal("palette_8bit_entries_22.dcm", "PALETTE COLOR, 22 8-bit entries in 11 OW words (descriptor 22, 0, 8)",
        (22, 0, 8), ramp[:22] * 11, 255 - ramp[:22] * 11, (ramp[:22] * 7) % 256, data=small22, bits_entry=8)
    pal("palette_first_mapped_10.dcm", "PALETTE COLOR, first mapped value 10 (indices below map to entry 0)",
        (246, 10, 16), red[10:], green[10:], blue[10:])
    pal("palette_8bit_entries.dcm", "PALETTE COLOR, 256 8-bit entries in 128 OW words (descriptor 256, 0, 8)", (256, 0, 8),
        ramp, 255 - ramp, np.abs(128 - ramp).clip(0, 255) * 2 % 256, bits_entry=8)
    # Segmented palette (PS3.3 C.7.9.2): discrete (0), linear (1) and indirect (2) segments.
    seg_red = [0, 1, 0, 1, 255, 65535]                         # discrete 0, then a ramp to 65535 over 255
    seg_green = [0, 1, 65535, 1, 127, 0, 1, 128, 65535]       # down to 0 at 128, back up to 65535 at 255
    seg_blue = [0, 4, 0, 100, 200, 300, 1, 252, 40000]        # four discrete values, then a ramp
    pal("palette_segmented.dcm", "segmented PALETTE COLOR (discrete and linear segments)", (256, 0, 16),
        seg_red, seg_green, seg_blue, segmented=True)
    # Indirect segment: repeat the first two segments of the red table.
    seg_ind = [0, 1, 0, 1, 127, 30000, 2, 2] + list(struct.unpack("<HH", struct.pack("<I", 0)))
    pal("palette_segmented_indirect.dcm", "segmented PALETTE COLOR with an indirect segment", (256, 0, 16),
        seg_ind, seg_green, seg_blue, segmented=True)


def bit_depths():
    # Bits Allocated 1: a two-frame segmentation with odd dimensions (frames share bytes).
    rows, cols = 13, 11
    mask = (gray(rows, cols, 8, 100, frames=2) > 128).astype(np.uint8)
    ds = dataset("seg_binary", rows, cols, ba=1, bs=1, frames=2, sop=SEG)
    ds.Modality = "SEG"
    ds.SegmentationType = "BINARY"
    ds.PixelData = pack_bits(mask.reshape(-1))
    ds["PixelData"].VR = "OB"
    save(ds, "bits1_segmentation_2frames_13x11.dcm", "Bits Allocated 1: binary segmentation, two 13x11 frames (bits cross bytes)")
    ds = dataset("bits1_single", 16, 24, ba=1, bs=1)
    m1 = (gray(16, 24, 8, 101) > 100).astype(np.uint8)
    ds.PixelData = pack_bits(m1.reshape(-1))
    ds["PixelData"].VR = "OB"
    save(ds, "bits1_single_frame_16x24.dcm", "Bits Allocated 1, one frame")
    # Bits Allocated 32: unsigned, signed, and an RT dose with grid scaling.
    ds = dataset("bits32_unsigned", 24, 28, ba=32, bs=32)
    save(native(ds, gray(24, 28, 32, 102).astype(np.uint32)), "bits32_unsigned.dcm", "Bits Allocated 32, unsigned")
    ds = dataset("bits32_signed", 24, 28, ba=32, bs=32, signed=True)
    ds.RescaleSlope, ds.RescaleIntercept = "0.001", "-5"
    save(native(ds, gray(24, 28, 31, 103, signed=True).astype(np.int32)), "bits32_signed_rescale.dcm",
         "Bits Allocated 32, signed, rescale slope 0.001")
    ds = dataset("rtdose32", 20, 24, ba=32, bs=32, frames=2, sop=RTDOSE)
    ds.Modality = "RTDOSE"
    ds.DoseUnits, ds.DoseType, ds.DoseSummationType = "GY", "PHYSICAL", "PLAN"
    ds.DoseGridScaling = "1.5e-5"
    ds.GridFrameOffsetVector = [0, 2.5]
    ds.FrameIncrementPointer = 0x3004000C
    save(native(ds, gray(20, 24, 24, 104, frames=2).astype(np.uint32)), "bits32_rtdose_2frames.dcm",
         "RT dose, Bits Allocated 32, two frames")
    # Float and double float pixel data (parametric map).
    for tag, vr, ba, dt in (("FloatPixelData", "OF", 32, "<f4"), ("DoubleFloatPixelData", "OD", 64, "<f8")):
        name = f"float{ba}_parametric_map.dcm"
        ds = dataset(name, 20, 22, ba=ba, bs=None, sop=PMAP)
        del ds.BitsStored, ds.HighBit, ds.PixelRepresentation
        ds.Modality = "MR"
        vals = (gray(20, 22, 16, 105 + ba).astype(np.float64) / 1000.0 - 20.0).astype(dt)
        setattr(ds, tag, vals.tobytes())
        ds[tag].VR = vr
        save(ds, name, f"{tag} (Bits Allocated {ba}, {vr}): parametric map")


def nested(depth, defined_length, name, what):
    """A valid 8-bit image whose data set holds `depth` nested sequence levels (0040,A730) between
    the image pixel module and the pixel data."""
    ds = dataset(name, 16, 16)
    head = encoded(ds)
    inner = b""
    for level in range(depth):
        item_body = element_le(0x0040, 0xA010, "CS", b"CONTAINS") + (inner if inner else b"")
        if defined_length:
            item = struct.pack("<HHI", 0xFFFE, 0xE000, len(item_body)) + item_body
            inner = struct.pack("<HH2sHI", 0x0040, 0xA730, b"SQ", 0, len(item)) + item
        else:
            item = struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF) + item_body + struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
            inner = struct.pack("<HH2sHI", 0x0040, 0xA730, b"SQ", 0, 0xFFFFFFFF) + item + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    pixels = gray(16, 16, 8, 110).astype(np.uint8).tobytes()
    raw_file(name, what, ds.file_meta, head, inner, element_le(0x7FE0, 0x0010, "OB", pixels))


def deep_nesting():
    nested(50, False, "nested_sequences_50_levels.dcm", "50 nested sequences, undefined lengths (must decode)")
    nested(10000, False, "nested_sequences_10000_levels_undefined_length.dcm",
           "10,000 nested sequences, undefined lengths (must not crash)")
    nested(10000, True, "nested_sequences_10000_levels_defined_length.dcm",
           "10,000 nested sequences, defined lengths (must not crash)")


def cut(data, frac):
    n = max(2, int(len(data) * frac)) & ~1
    return data[:n]


def truncated(made, rle_src, j2k):
    """Streams and files cut short: a decoder must refuse them, never fill in the missing part."""
    ds = dataset("trunc_native", 40, 44, ba=16, bs=16)
    native(ds, gray(40, 44, 16, 120))
    full = os.path.join(SCRATCH, "trunc_native.dcm")
    ds.save_as(full, enforce_file_format=True)
    body = open(full, "rb").read()
    with open(path_of("truncated_native_file_cut_mid_pixel_data.dcm"), "wb") as f:
        f.write(body[:len(body) - 1000])
    MADE.append(("truncated_native_file_cut_mid_pixel_data.dcm", "native 16-bit, file ends 1000 bytes before the pixel data does"))
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid("trunc_short")
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
    save(ds, "truncated_native_pixel_data_half_length.dcm",
         "native 16-bit, pixel data element holds half the image (consistent element length)")
    ds = dataset("trunc_native_rgb", 30, 34, spp=3, pi="RGB")
    native(ds, rgb(30, 34, 121))
    ds.PixelData = ds.PixelData[:-34 * 3 * 2]
    save(ds, "truncated_native_rgb_two_rows_short.dcm", "native RGB, pixel data two rows short")

    single = {
        "jpeg_baseline": path_of("jpeg_baseline_ybr_full_422.dcm"),
        "jpeg_extended": path_of("jpeg_extended_gray12.dcm"),
        "jpeg_lossless": path_of("jpeg_lossless_sv1_gray16.dcm"),
        "jpegls_lossless": path_of("jpegls_lossless_gray16.dcm"),
        "jpegls_near": path_of("jpegls_near2_gray12.dcm"),
        "rle": rle_src,
        "j2k_lossless": j2k["j2k_lossless_gray16.dcm"],
        "j2k_lossy": j2k["j2k_lossy_gray12.dcm"],
    }
    for kind, src in single.items():
        _, frames = frames_of(src)
        for frac in (0.25, 0.5, 0.9):
            pct = int(frac * 100)
            with_frames(src, f"truncated_{kind}_stream_cut_at_{pct}pct.dcm",
                        f"{kind}: the frame's codestream cut to {pct} % (fragment length consistent)",
                        [cut(frames[0], frac)] + frames[1:])
        # The whole file cut inside the fragment: item length promises more than the file holds.
        body = open(src, "rb").read()
        name = f"truncated_{kind}_file_cut_inside_fragment.dcm"
        with open(path_of(name), "wb") as f:
            f.write(body[: len(body) - max(16, len(frames[0]) // 3)])
        MADE.append((name, f"{kind}: file ends inside the pixel data fragment"))
    # RLE: a segment offset in the header points past the end of the data (16-bit: two segments).
    rle16 = path_of("rle_gray16.dcm")
    _, frames = frames_of(rle16)
    f0 = bytearray(frames[0])
    assert struct.unpack_from("<I", f0, 0)[0] == 2
    struct.pack_into("<I", f0, 8, len(f0) + 400)
    with_frames(rle16, "truncated_rle_segment_offset_past_end.dcm",
                "RLE: the header's second segment offset points past the frame's end", [bytes(f0)])
    # Multi-frame: the last frame's fragment missing (number of frames says 3, two present).
    comp, frames = made["baseline"]
    with_frames(comp, "truncated_jpeg_baseline_3frames_last_frame_missing.dcm",
                "JPEG baseline, NumberOfFrames 3, only two frames' fragments present", frames[:2])


def encodings():
    """Big endian and deflated (dcmconv), odd lengths (by hand)."""
    conv = (("native_gray8.dcm", "gray8"), ("native_gray16_signed_rescale_window.dcm", "gray16_signed"),
            ("native_rgb_planar0.dcm", "rgb_planar0"), ("bits32_signed_rescale.dcm", "bits32_signed"),
            ("palette_256_entries.dcm", "palette"), ("bits1_segmentation_2frames_13x11.dcm", "bits1_seg"),
            ("native_gray12_in16_garbage_high_bits.dcm", "gray12_high_bits"))
    for src, tag in conv:
        name = f"big_endian_{tag}.dcm"
        dcmtk("dcmconv", "+tb", path_of(src), path_of(name))
        MADE.append((name, f"explicit VR big endian copy of {src} (dcmconv +tb)"))
    for src, tag in (("native_gray16_signed_rescale_window.dcm", "gray16_signed"), ("native_rgb_planar1.dcm", "rgb_planar1")):
        name = f"deflated_{tag}.dcm"
        dcmtk("dcmconv", "+td", path_of(src), path_of(name))
        MADE.append((name, f"deflated explicit VR little endian copy of {src} (dcmconv +td)"))
    # Odd lengths: a 3x5 8-bit image (15 bytes of pixel data, no padding) and an odd-length string.
    ds = dataset("odd_pixel_length", 3, 5)
    del ds.PatientName
    head = encoded(ds)
    # Elements must stay in tag order: (0010,0010) comes after group 0008 and before 0018/0020/0028.
    split = head.find(struct.pack("<HH", 0x0010, 0x0020))
    odd_name = element_le(0x0010, 0x0010, "PN", b"ODD")
    pixels = gray(3, 5, 8, 130).astype(np.uint8).tobytes()
    raw_file("odd_length_pixel_data_and_string.dcm",
             "odd value lengths: PatientName of 3 bytes, 15 bytes of 8-bit pixel data, no padding",
             ds.file_meta, head[:split], odd_name, head[split:], element_le(0x7FE0, 0x0010, "OB", pixels))


def main():
    global OUT, SCRATCH
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    for tool in ("dcmcjpeg", "dcmcjpls", "dcmconv"):
        if shutil.which(tool) is None:
            sys.exit(f"dicom_corpus_make: {tool} missing (apt-get install dcmtk; tools/setup.sh)")
    OUT = os.path.abspath(sys.argv[1])
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    os.makedirs(OUT)
    with tempfile.TemporaryDirectory() as scratch:
        SCRATCH = scratch
        sanity()
        ybr()
        rle_src = rle()
        jpeg_ls()
        jpeg()
        made = fragments()
        j2k = jpeg2000()
        palettes()
        bit_depths()
        deep_nesting()
        truncated(made, rle_src, j2k)
        encodings()
    with open(os.path.join(OUT, "README.md"), "w") as f:
        f.write("# Generated DICOM corpus (tools/dicom_corpus_make.py)\n\n| file | tests |\n|---|---|\n")
        for name, what in sorted(MADE):
            f.write(f"| {name} | {what} |\n")
    size = sum(os.path.getsize(os.path.join(OUT, n)) for n, _ in MADE)
    print(f"dicom_corpus_make: {len(MADE)} files, {size / 1e6:.1f} MB in {OUT}")


if __name__ == "__main__":
    main()
