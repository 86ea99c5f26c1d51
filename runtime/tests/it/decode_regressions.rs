//! Regression tests for the decoder bugs of issue #28, each named after the bug, on small files
//! written here with dicom-rs (or by hand where dicom-rs will not write what the bug needs).

use std::path::Path;

use dicom_core::value::Value;
use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};
use scanside_runtime::decode::{decode_bytes, read_dicom_values, DicomValues, MAX_SEQUENCE_DEPTH};

const RLE: &str = "1.2.840.10008.1.2.5";

fn us(tag: Tag, v: u16) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, VR::US, PrimitiveValue::from(v))
}

fn cs(tag: Tag, v: &str) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, VR::CS, PrimitiveValue::from(v))
}

/// An image header: `rows × cols`, `samples` of `bits` bits (all stored), unsigned.
fn image(rows: u16, cols: u16, samples: u16, bits: u16, photometric: &str) -> InMemDicomObject {
    let mut obj = InMemDicomObject::from_element_iter([
        DataElement::new(
            tags::SOP_CLASS_UID,
            VR::UI,
            PrimitiveValue::from(uids::SECONDARY_CAPTURE_IMAGE_STORAGE),
        ),
        DataElement::new(
            tags::SOP_INSTANCE_UID,
            VR::UI,
            PrimitiveValue::from("1.2.3.4"),
        ),
        cs(tags::MODALITY, "OT"),
        us(tags::SAMPLES_PER_PIXEL, samples),
        cs(tags::PHOTOMETRIC_INTERPRETATION, photometric),
        us(tags::ROWS, rows),
        us(tags::COLUMNS, cols),
        us(tags::BITS_ALLOCATED, bits),
        us(tags::BITS_STORED, bits),
        us(tags::HIGH_BIT, bits - 1),
        us(tags::PIXEL_REPRESENTATION, 0),
    ]);
    if samples > 1 {
        obj.put(us(tags::PLANAR_CONFIGURATION, 0));
    }
    obj
}

/// `obj` as Part 10 bytes in transfer syntax `ts`.
fn part10(obj: InMemDicomObject, ts: &str) -> Vec<u8> {
    let file = obj
        .with_meta(
            FileMetaTableBuilder::new()
                .transfer_syntax(ts)
                .media_storage_sop_class_uid(uids::SECONDARY_CAPTURE_IMAGE_STORAGE)
                .media_storage_sop_instance_uid("1.2.3.4"),
        )
        .unwrap();
    let mut out = Vec::new();
    file.write_all(&mut out).unwrap();
    out
}

fn encapsulated(obj: &mut InMemDicomObject, offsets: Vec<u32>, fragments: Vec<Vec<u8>>) {
    let value: Value<InMemDicomObject, dicom_object::mem::InMemFragment> = Value::PixelSequence(
        dicom_core::value::PixelFragmentSequence::new(offsets, fragments),
    );
    obj.put(DataElement::new(tags::PIXEL_DATA, VR::OB, value));
}

fn decode(bytes: &[u8]) -> Result<DicomValues, String> {
    read_dicom_values(Path::new("r.dcm"), bytes).map_err(|e| e.to_string())
}

/// PackBits with literal runs only (what a simple encoder may write), plus a repeat run.
fn packbits(plane: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for chunk in plane.chunks(100) {
        out.push((chunk.len() - 1) as u8);
        out.extend_from_slice(chunk);
    }
    out
}

/// One RLE frame: header + one PackBits segment per byte plane (MSB first) of each sample.
fn rle_frame(values: &[u16], samples: usize, bytes_per_sample: usize) -> Vec<u8> {
    let pixels = values.len() / samples;
    let mut segments = Vec::new();
    for s in 0..samples {
        for b in (0..bytes_per_sample).rev() {
            let plane: Vec<u8> = (0..pixels)
                .map(|i| (values[i * samples + s] >> (8 * b)) as u8)
                .collect();
            segments.push(packbits(&plane));
        }
    }
    let mut header = [0_u32; 16];
    header[0] = segments.len() as u32;
    let mut offset = 64;
    for (i, s) in segments.iter().enumerate() {
        header[i + 1] = offset;
        offset += s.len() as u32;
    }
    let mut out: Vec<u8> = header.iter().flat_map(|v| v.to_le_bytes()).collect();
    segments.iter().for_each(|s| out.extend_from_slice(s));
    if out.len() % 2 == 1 {
        out.push(0);
    }
    out
}

fn ramp(n: usize, modulo: u32) -> Vec<u16> {
    (0..n)
        .map(|i| ((i as u32 * 37 + 11) % modulo) as u16)
        .collect()
}

#[test]
fn nested_sequences_deeper_than_the_limit_are_refused_not_a_stack_overflow() {
    // 10,000 levels of undefined-length sequences, written by hand (dicom-rs would recurse).
    let mut obj = image(2, 2, 1, 8, "MONOCHROME2");
    obj.put(DataElement::new(
        tags::PIXEL_DATA,
        VR::OB,
        PrimitiveValue::from(vec![1_u8, 2, 3, 4]),
    ));
    let mut bytes = part10(obj, uids::EXPLICIT_VR_LITTLE_ENDIAN);
    let levels = 10_000;
    let meta_end = bytes
        .windows(4)
        .position(|w| w == [0x08, 0x00, 0x16, 0x00])
        .unwrap();
    let mut nested = Vec::new();
    for _ in 0..levels {
        nested.extend_from_slice(&[
            0x08, 0x00, 0x15, 0x11, b'S', b'Q', 0, 0, 0xFF, 0xFF, 0xFF, 0xFF,
        ]);
        nested.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 0xFF, 0xFF, 0xFF, 0xFF]);
    }
    for _ in 0..levels {
        nested.extend_from_slice(&[0xFE, 0xFF, 0x0D, 0xE0, 0, 0, 0, 0]);
        nested.extend_from_slice(&[0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
    }
    // (0008,1115) sorts after (0008,0016): insert it before (0008,0060) Modality.
    let modality = bytes
        .windows(4)
        .position(|w| w == [0x08, 0x00, 0x60, 0x00])
        .unwrap();
    assert!(modality > meta_end);
    bytes.splice(modality..modality, nested);
    let e = decode(&bytes).unwrap_err();
    assert!(
        e.contains("r.dcm") && e.contains("nested") && e.contains("limit"),
        "{e}"
    );
}

#[test]
fn nesting_at_the_depth_limit_decodes_on_a_small_thread_stack() {
    let mut obj = image(2, 2, 1, 8, "MONOCHROME2");
    obj.put(DataElement::new(
        tags::PIXEL_DATA,
        VR::OB,
        PrimitiveValue::from(vec![1_u8, 2, 3, 4]),
    ));
    let mut bytes = part10(obj, uids::EXPLICIT_VR_LITTLE_ENDIAN);
    let mut nested = Vec::new();
    for _ in 0..MAX_SEQUENCE_DEPTH {
        nested.extend_from_slice(&[
            0x08, 0x00, 0x15, 0x11, b'S', b'Q', 0, 0, 0xFF, 0xFF, 0xFF, 0xFF,
        ]);
        nested.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 0xFF, 0xFF, 0xFF, 0xFF]);
    }
    for _ in 0..MAX_SEQUENCE_DEPTH {
        nested.extend_from_slice(&[0xFE, 0xFF, 0x0D, 0xE0, 0, 0, 0, 0]);
        nested.extend_from_slice(&[0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
    }
    let modality = bytes
        .windows(4)
        .position(|w| w == [0x08, 0x00, 0x60, 0x00])
        .unwrap();
    bytes.splice(modality..modality, nested);
    // The receiver and the drop folder decode on worker threads: 2 MiB is Rust's default.
    let values = std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(move || decode(&bytes))
        .unwrap()
        .join()
        .unwrap()
        .unwrap();
    assert_eq!(values.values, vec![1.0, 2.0, 3.0, 4.0]);
}

#[test]
fn rle_frame_split_over_fragments_decodes_instead_of_panicking() {
    let (rows, cols) = (20_u16, 22_u16);
    let values = ramp(usize::from(rows * cols), 65_536);
    let frame = rle_frame(&values, 1, 2);
    // Fragments have even lengths (PS3.5 A.4): the frame's bytes are split, never padded.
    let parts: Vec<Vec<u8>> = frame
        .chunks((frame.len() / 4 + 1) & !1)
        .map(<[u8]>::to_vec)
        .collect();
    assert!(parts.len() >= 4, "{}", parts.len());
    for offsets in [vec![], vec![0]] {
        let mut obj = image(rows, cols, 1, 16, "MONOCHROME2");
        encapsulated(&mut obj, offsets, parts.clone());
        let got = decode(&part10(obj, RLE)).unwrap();
        let want: Vec<f32> = values.iter().map(|&v| f32::from(v)).collect();
        assert_eq!(got.values, want);
    }
}

#[test]
fn rle_frames_split_over_fragments_with_an_offset_table_decode_each_frame() {
    let (rows, cols) = (6_u16, 10_u16);
    let frames: Vec<Vec<u16>> = (0..2).map(|f| ramp(60, 200 + f)).collect();
    let mut fragments = Vec::new();
    let mut offsets = Vec::new();
    let mut position = 0;
    for f in &frames {
        offsets.push(position);
        let rle = rle_frame(f, 1, 1);
        for part in rle.chunks((rle.len() / 3 + 1) & !1) {
            position += 8 + part.len() as u32;
            fragments.push(part.to_vec());
        }
    }
    let mut obj = image(rows, cols, 1, 8, "MONOCHROME2");
    obj.put(DataElement::new(
        tags::NUMBER_OF_FRAMES,
        VR::IS,
        PrimitiveValue::from("2"),
    ));
    encapsulated(&mut obj, offsets, fragments);
    let bytes = part10(obj, RLE);
    let mut got = Vec::new();
    scanside_runtime::decode::read_dicom_frames(
        Path::new("r.dcm"),
        &bytes,
        scanside_runtime::decode::DicomFrames::Every,
        |v| {
            got.push(v.values);
            Ok(())
        },
    )
    .unwrap();
    let want: Vec<Vec<f32>> = frames
        .iter()
        .map(|f| f.iter().map(|&v| f32::from(v)).collect())
        .collect();
    assert_eq!(got, want);
}

#[test]
fn an_rle_stream_cut_short_is_refused_not_a_panic() {
    let values = ramp(40 * 44, 256);
    let frame = rle_frame(&values, 1, 1);
    for keep in [70, frame.len() / 2, frame.len() - 10] {
        let mut cut = frame[..keep].to_vec();
        if cut.len() % 2 == 1 {
            cut.push(0);
        }
        let mut obj = image(40, 44, 1, 8, "MONOCHROME2");
        encapsulated(&mut obj, vec![], vec![cut]);
        let e = decode(&part10(obj, RLE)).unwrap_err();
        assert!(e.contains("r.dcm") && e.contains("RLE"), "{e}");
    }
}

#[test]
fn rle_ybr_full_is_converted_to_rgb() {
    // Grey (Y = v, Cb = Cr = 128) must come back as R = G = B = v.
    let ybr: Vec<u16> = (0..16_u16).flat_map(|v| [v * 15, 128, 128]).collect();
    let mut obj = image(4, 4, 3, 8, "YBR_FULL");
    encapsulated(&mut obj, vec![], vec![rle_frame(&ybr, 3, 1)]);
    let got = decode(&part10(obj, RLE)).unwrap();
    let want: Vec<f32> = (0..16_u16).flat_map(|v| [f32::from(v * 15); 3]).collect();
    assert_eq!(got.values, want);
}

#[test]
fn uncompressed_ybr_full_422_is_decoded_not_out_of_range() {
    // Y1 Y2 Cb Cr per pair of pixels: grey, so RGB = Y.
    let mut obj = image(2, 4, 3, 8, "YBR_FULL_422");
    let packed: Vec<u8> = (0..4)
        .flat_map(|p| [p * 20, p * 20 + 10, 128, 128])
        .collect();
    obj.put(DataElement::new(
        tags::PIXEL_DATA,
        VR::OB,
        PrimitiveValue::from(packed),
    ));
    let got = decode(&part10(obj, uids::EXPLICIT_VR_LITTLE_ENDIAN)).unwrap();
    let want: Vec<f32> = (0..4_u8)
        .flat_map(|p| [p * 20, p * 20 + 10])
        .flat_map(|y| [f32::from(y); 3])
        .collect();
    assert_eq!(got.values, want);
}

#[test]
fn bits_allocated_1_is_refused_naming_the_object() {
    let mut obj = image(8, 8, 1, 8, "MONOCHROME2");
    obj.put(us(tags::BITS_ALLOCATED, 1));
    obj.put(us(tags::BITS_STORED, 1));
    obj.put(us(tags::HIGH_BIT, 0));
    obj.put(DataElement::new(
        tags::SOP_CLASS_UID,
        VR::UI,
        PrimitiveValue::from("1.2.840.10008.5.1.4.1.1.66.4"),
    ));
    obj.put(DataElement::new(
        tags::PIXEL_DATA,
        VR::OB,
        PrimitiveValue::from(vec![0xAA_u8; 8]),
    ));
    let e = decode(&part10(obj, uids::EXPLICIT_VR_LITTLE_ENDIAN)).unwrap_err();
    assert!(
        e.contains("r.dcm")
            && e.contains("a Segmentation object")
            && e.contains("Bits Allocated 1"),
        "{e}"
    );
}

#[test]
fn bits_allocated_32_rt_dose_decodes_as_values() {
    let mut obj = image(2, 3, 1, 32, "MONOCHROME2");
    let values = [0_u32, 1, 795_000, 1_254_000, 16_777_216, 7];
    obj.put(DataElement::new(
        tags::PIXEL_DATA,
        VR::OW,
        PrimitiveValue::U32(values.iter().copied().collect()),
    ));
    // Explicit VR big endian (retired, still written by old devices) as well.
    for ts in [uids::EXPLICIT_VR_LITTLE_ENDIAN, "1.2.840.10008.1.2.2"] {
        let got = decode(&part10(obj.clone(), ts)).unwrap();
        assert_eq!(
            got.values,
            values.iter().map(|&v| v as f32).collect::<Vec<_>>(),
            "{ts}"
        );
    }
}

#[test]
fn float_pixel_data_is_read_instead_of_no_pixel_data() {
    let mut obj = image(2, 2, 1, 32, "MONOCHROME2");
    obj.remove_element(tags::BITS_STORED);
    obj.remove_element(tags::HIGH_BIT);
    obj.remove_element(tags::PIXEL_REPRESENTATION);
    let values = [-20.0_f32, 0.5, 45.535, 3.0];
    obj.put(DataElement::new(
        tags::FLOAT_PIXEL_DATA,
        VR::OF,
        PrimitiveValue::F32(values.iter().copied().collect()),
    ));
    let got = decode(&part10(obj, uids::EXPLICIT_VR_LITTLE_ENDIAN)).unwrap();
    assert_eq!(got.values, values.to_vec());
}

#[test]
fn pixel_attributes_stored_as_vr_un_keep_their_meaning() {
    // Pixel Representation 1 written with VR UN: the values are signed.
    let mut obj = image(1, 2, 1, 16, "MONOCHROME2");
    obj.put(DataElement::new(
        tags::PIXEL_REPRESENTATION,
        VR::UN,
        PrimitiveValue::from(vec![1_u8, 0]),
    ));
    obj.put(DataElement::new(
        tags::PIXEL_DATA,
        VR::OW,
        PrimitiveValue::U16([0xFFFF_u16, 5].into_iter().collect()),
    ));
    let got = decode(&part10(obj, uids::EXPLICIT_VR_LITTLE_ENDIAN)).unwrap();
    assert_eq!(got.values, vec![-1.0, 5.0]);
}

/// A PALETTE COLOR image with index values 0..4 and `red` as every table's data.
fn palette(descriptor: [u16; 3], red: DataElement<InMemDicomObject>) -> Vec<u8> {
    let mut obj = image(1, 4, 1, 8, "PALETTE COLOR");
    for (d, data) in [
        (
            tags::RED_PALETTE_COLOR_LOOKUP_TABLE_DESCRIPTOR,
            red.header().tag,
        ),
        (
            tags::GREEN_PALETTE_COLOR_LOOKUP_TABLE_DESCRIPTOR,
            Tag(red.header().tag.0, red.header().tag.1 + 1),
        ),
        (
            tags::BLUE_PALETTE_COLOR_LOOKUP_TABLE_DESCRIPTOR,
            Tag(red.header().tag.0, red.header().tag.1 + 2),
        ),
    ] {
        obj.put(DataElement::new(
            d,
            VR::US,
            PrimitiveValue::U16(descriptor.into_iter().collect()),
        ));
        obj.put(DataElement::new(data, red.vr(), red.value().clone()));
    }
    obj.put(DataElement::new(
        tags::PIXEL_DATA,
        VR::OB,
        PrimitiveValue::from(vec![0_u8, 1, 2, 3]),
    ));
    part10(obj, uids::EXPLICIT_VR_LITTLE_ENDIAN)
}

#[test]
fn palette_with_8_bit_entries_packed_in_words_is_read_as_bytes() {
    // 4 one-byte entries (10, 20, 30, 40) in 2 OW words, little endian.
    let words = PrimitiveValue::U16([10 | 20 << 8, 30 | 40 << 8].into_iter().collect());
    let red = DataElement::new(tags::RED_PALETTE_COLOR_LOOKUP_TABLE_DATA, VR::OW, words);
    let got = decode(&palette([4, 0, 8], red)).unwrap();
    let want: Vec<f32> = [10.0, 20.0, 30.0, 40.0]
        .iter()
        .flat_map(|&v| [v; 3])
        .collect();
    assert_eq!(got.values, want);
}

#[test]
fn segmented_palette_is_expanded() {
    // Discrete [0], then linear to 3000 over 3 entries.
    let words = PrimitiveValue::U16([0_u16, 1, 0, 1, 3, 3000].into_iter().collect());
    let red = DataElement::new(
        tags::SEGMENTED_RED_PALETTE_COLOR_LOOKUP_TABLE_DATA,
        VR::OW,
        words,
    );
    let got = decode(&palette([4, 0, 16], red)).unwrap();
    let want: Vec<f32> = [0.0, 1000.0, 2000.0, 3000.0]
        .iter()
        .flat_map(|&v| [v; 3])
        .collect();
    assert_eq!(got.values, want);
}

#[test]
fn file_meta_with_an_over_long_ae_title_is_read() {
    let mut obj = image(1, 2, 1, 8, "MONOCHROME2");
    obj.put(DataElement::new(
        tags::PIXEL_DATA,
        VR::OB,
        PrimitiveValue::from(vec![7_u8, 9]),
    ));
    let mut bytes = part10(obj, uids::EXPLICIT_VR_LITTLE_ENDIAN);
    // Replace the file meta's implementation version name by an 18-byte one, as some writers do.
    let at = bytes
        .windows(4)
        .position(|w| w == [0x02, 0x00, 0x13, 0x00])
        .unwrap();
    let len = usize::from(u16::from_le_bytes([bytes[at + 6], bytes[at + 7]]));
    let long = b"A_VERSION_NAME_18B";
    bytes.splice(at + 8..at + 8 + len, long.iter().copied());
    bytes[at + 6..at + 8].copy_from_slice(&(long.len() as u16).to_le_bytes());
    let group_length = u32::from_le_bytes([bytes[140], bytes[141], bytes[142], bytes[143]]);
    let fixed = group_length as i64 + long.len() as i64 - len as i64;
    bytes[140..144].copy_from_slice(&(fixed as u32).to_le_bytes());
    assert_eq!(decode(&bytes).unwrap().values, vec![7.0, 9.0]);
}

#[test]
fn a_jpeg_without_its_end_of_image_marker_is_refused_not_screened() {
    let mut jpeg = Vec::new();
    image::RgbImage::from_fn(64, 64, |x, y| image::Rgb([x as u8 * 4, y as u8 * 4, 90]))
        .write_to(
            &mut std::io::Cursor::new(&mut jpeg),
            image::ImageFormat::Jpeg,
        )
        .unwrap();
    assert!(decode_bytes(Path::new("whole.jpg"), &jpeg).is_ok());
    for keep in [700.min(jpeg.len() - 2), jpeg.len() - 2] {
        let e = decode_bytes(Path::new("cut.jpg"), &jpeg[..keep])
            .unwrap_err()
            .to_string();
        assert!(e.contains("cut.jpg") && e.contains("truncated"), "{e}");
    }
}

#[test]
fn a_png_without_its_iend_chunk_is_refused() {
    let mut png = Vec::new();
    image::GrayImage::from_fn(32, 32, |x, y| image::Luma([(x ^ y) as u8]))
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    let e = decode_bytes(Path::new("cut.png"), &png[..png.len() - 12])
        .unwrap_err()
        .to_string();
    assert!(e.contains("cut.png") && e.contains("IEND"), "{e}");
}

#[test]
fn a_dicom_jpeg_frame_cut_short_is_refused() {
    let mut jpeg = Vec::new();
    image::GrayImage::from_fn(32, 32, |x, y| image::Luma([(x * 8 + y) as u8]))
        .write_to(
            &mut std::io::Cursor::new(&mut jpeg),
            image::ImageFormat::Jpeg,
        )
        .unwrap();
    let mut cut = jpeg[..jpeg.len() / 2].to_vec();
    if cut.len() % 2 == 1 {
        cut.push(0);
    }
    let mut obj = image(32, 32, 1, 8, "MONOCHROME2");
    encapsulated(&mut obj, vec![], vec![cut]);
    let e = decode(&part10(obj, uids::JPEG_BASELINE8_BIT)).unwrap_err();
    assert!(e.contains("r.dcm") && e.contains("truncated"), "{e}");
}

#[test]
fn a_jpeg_2000_codestream_declaring_a_huge_image_is_refused_before_openjpeg_allocates_it() {
    // The cargo-fuzz artifact's shape: a 512 x 512 header, a codestream whose SIZ declares
    // 512 x 2,883,584 samples; OpenJPEG allocated and cleared 2 GB before the sizes were compared.
    let mut siz = vec![0xFF, 0x4F, 0xFF, 0x51, 0x00, 0x29, 0x00, 0x00];
    for v in [512_u32, 2_883_584, 0, 0, 512, 512, 0, 0] {
        siz.extend_from_slice(&v.to_be_bytes());
    }
    siz.extend_from_slice(&[0x00, 0x01, 0x07, 0x01, 0x01]);
    siz.extend_from_slice(&[0xFF, 0xD9, 0x00]);
    let mut obj = image(512, 512, 1, 8, "MONOCHROME2");
    encapsulated(&mut obj, vec![], vec![siz]);
    let started = std::time::Instant::now();
    let e = decode(&part10(obj, "1.2.840.10008.1.2.4.90")).unwrap_err();
    assert!(e.contains("r.dcm") && e.contains("512x2883584"), "{e}");
    assert!(started.elapsed().as_secs() < 5, "{:?}", started.elapsed());
}

#[test]
fn a_jpeg_declaring_more_pixels_than_the_limit_is_refused_before_decoding() {
    // The cargo-fuzz artifact's shape: 2 kB of JPEG declaring 13312 x 12288 pixels took seconds
    // and most of a gigabyte to decode. A small JPEG with the size in its SOF0 changed.
    let mut jpeg = Vec::new();
    image::GrayImage::from_pixel(16, 16, image::Luma([90]))
        .write_to(
            &mut std::io::Cursor::new(&mut jpeg),
            image::ImageFormat::Jpeg,
        )
        .unwrap();
    let sof = jpeg.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
    jpeg[sof + 5..sof + 7].copy_from_slice(&12288_u16.to_be_bytes());
    jpeg[sof + 7..sof + 9].copy_from_slice(&13312_u16.to_be_bytes());
    let e = decode_bytes(Path::new("big.jpg"), &jpeg)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("big.jpg") && e.contains("13312x12288") && e.contains("limit"),
        "{e}"
    );
}

#[test]
fn a_jpeg_whose_scan_is_too_short_for_its_frame_is_refused_not_filled_in() {
    // The cargo-fuzz artifact's shape: 977 bytes of JPEG declaring 564 x 54,576 pixels (under the
    // pixel limit) decoded to 0.9 s of grey invented past the few blocks its scan held. A 16 x 16
    // JPEG with the size in its SOF0 changed to 564 x 2048, as a file and as a DICOM frame.
    let mut jpeg = Vec::new();
    image::GrayImage::from_pixel(16, 16, image::Luma([90]))
        .write_to(
            &mut std::io::Cursor::new(&mut jpeg),
            image::ImageFormat::Jpeg,
        )
        .unwrap();
    let sof = jpeg.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
    jpeg[sof + 5..sof + 7].copy_from_slice(&2048_u16.to_be_bytes());
    jpeg[sof + 7..sof + 9].copy_from_slice(&564_u16.to_be_bytes());
    let e = decode_bytes(Path::new("short.jpg"), &jpeg)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("short.jpg") && e.contains("564x2048") && e.contains("cut short"),
        "{e}"
    );
    if jpeg.len() % 2 == 1 {
        jpeg.push(0);
    }
    let mut obj = image(2048, 564, 1, 8, "MONOCHROME2");
    encapsulated(&mut obj, vec![], vec![jpeg]);
    let e = decode(&part10(obj, uids::JPEG_BASELINE8_BIT)).unwrap_err();
    assert!(e.contains("r.dcm") && e.contains("cut short"), "{e}");
}

#[test]
fn a_jpeg_2000_packet_header_that_wraps_openjpegs_unsigned_arithmetic_is_not_a_panic() {
    // The cargo-fuzz artifact, minimised: a JPEG 2000 DICOM file whose packet header makes
    // openjp2 compute `(u32)numbps + 1` with numbps = -1. C wraps it (so does a release build);
    // debug builds panicked until openjp2's overflow checks were turned off in the dev profile.
    let bytes = include_bytes!("fuzz/openjp2_overflow_in_packet_header.dcm");
    let path = Path::new("overflow.dcm");
    let decoded = std::panic::catch_unwind(|| read_dicom_values(path, bytes))
        .expect("openjp2 panicked on a corrupt packet header")
        .unwrap();
    // OpenJPEG's C library (pylibjpeg-openjpeg 2) decodes this codestream too, to 48 x 52
    // samples summing to 5,113,864: the damage is one code-block's bit-plane count.
    assert_eq!((decoded.width, decoded.height), (52, 48));
    let sum: f64 = decoded.values.iter().map(|&v| f64::from(v)).sum();
    assert_eq!(sum, 5_113_864.0);
    assert!(decode_bytes(path, bytes).is_ok());
}
