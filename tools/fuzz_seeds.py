#!/usr/bin/env python3
"""Writes the seed corpora of the runtime's fuzz targets (runtime/fuzz) into OUT_DIR/<target>:

  decode    pydicom's small test files (every transfer syntax it has under 40 kB), the generated
            DICOM corpus (tools/dicom_corpus_make.py) under 40 kB, a PNG and a JPEG (a baseline
            frame taken out of a DICOM seed)
  jpegls    the JPEG-LS codestreams inside those DICOM files
  manifest  a bundle manifest as `export` writes it (runtime/fuzz/seeds/manifest.json)
  command   DIMSE command sets: C-ECHO-RQ and C-STORE-RQ (implicit VR little endian)
  pdu       P-DATA-TF PDUs carrying those commands, an A-RELEASE-RQ and an A-ABORT

Usage: python3 tools/fuzz_seeds.py OUT_DIR [GENERATED_DICOM_DIR]
"""
import io
import os
import struct
import sys
import warnings

import numpy as np
import pydicom
from pydicom.data import get_testdata_files
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.filebase import DicomBytesIO

warnings.simplefilter("ignore")
SMALL = 40_000
JPEG_LS = {"1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"}


def write(out, target, name, data):
    os.makedirs(os.path.join(out, target), exist_ok=True)
    with open(os.path.join(out, target, name), "wb") as f:
        f.write(data)


def frames(ds):
    return int(getattr(ds, "NumberOfFrames", 1) or 1)


def dicom_seeds(out, generated):
    files = [f for f in get_testdata_files("*") if f.endswith(".dcm")]
    if generated:
        files += [os.path.join(generated, n) for n in sorted(os.listdir(generated)) if n.endswith(".dcm")]
    for path in files:
        if os.path.getsize(path) >= SMALL:
            continue
        data = open(path, "rb").read()
        name = os.path.basename(path)
        write(out, "decode", name, data)
        try:
            ds = pydicom.dcmread(io.BytesIO(data))
            if str(ds.file_meta.TransferSyntaxUID) in JPEG_LS:
                for i, frame in enumerate(generate_frames(ds.PixelData, number_of_frames=frames(ds))):
                    write(out, "jpegls", f"{name}.{i}.jls", frame)
        except Exception:
            pass


def raster_seeds(out):
    """A small PNG (written with zlib) and a JPEG (a baseline frame out of a DICOM seed)."""
    import zlib

    rows = b"".join(b"\x00" + bytes((x * 5 + y * 3) % 256 for x in range(48 * 3)) for y in range(32))
    chunk = lambda kind, data: (
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    )
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 48, 32, 8, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    write(out, "decode", "small.png", png)
    for path in sorted(os.listdir(os.path.join(out, "decode"))):
        try:
            ds = pydicom.dcmread(os.path.join(out, "decode", path))
            if str(ds.file_meta.TransferSyntaxUID) == "1.2.840.10008.1.2.4.50":
                write(out, "decode", "small.jpg", next(generate_frames(ds.PixelData, number_of_frames=frames(ds))))
                return
        except Exception:
            pass


def command(field, sop_class, extra=None):
    ds = Dataset()
    ds.AffectedSOPClassUID = sop_class
    ds.CommandField = field
    ds.MessageID = 7
    ds.Priority = 0
    ds.CommandDataSetType = 0x0101 if field == 0x0030 else 0x0000
    if extra:
        ds.AffectedSOPInstanceUID = extra
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, True
    pydicom.filewriter.write_dataset(body, ds)
    body = body.getvalue()
    group = struct.pack("<HHI", 0, 0, 4) + struct.pack("<I", len(body))
    return group + body


def protocol_seeds(out):
    echo = command(0x0030, "1.2.840.10008.1.1")
    store = command(0x0001, "1.2.840.10008.5.1.4.1.1.7", "1.2.826.0.1.3680043.2.1125.9.1")
    write(out, "command", "c-echo-rq", echo)
    write(out, "command", "c-store-rq", store)
    for name, cmd in (("p-data-echo", echo), ("p-data-store", store)):
        pdv = struct.pack(">IBB", len(cmd) + 2, 1, 0x03) + cmd
        write(out, "pdu", name, struct.pack(">BBI", 0x04, 0, len(pdv)) + pdv)
    write(out, "pdu", "a-release-rq", struct.pack(">BBII", 0x05, 0, 4, 0))
    write(out, "pdu", "a-abort", struct.pack(">BBIBBBB", 0x07, 0, 4, 0, 0, 0, 0))


def manifest_seed(out):
    """The manifest the end-to-end test's export wrote (kept in runtime/fuzz/seeds)."""
    here = os.path.dirname(os.path.abspath(__file__))
    data = open(os.path.join(here, "..", "runtime", "fuzz", "seeds", "manifest.json"), "rb").read()
    write(out, "manifest", "manifest.json", data)


def main(out, generated=None):
    dicom_seeds(out, generated)
    raster_seeds(out)
    protocol_seeds(out)
    manifest_seed(out)
    for target in sorted(os.listdir(out)):
        print(f"{target}: {len(os.listdir(os.path.join(out, target)))} seeds")


if __name__ == "__main__":
    main(*sys.argv[1:3])
