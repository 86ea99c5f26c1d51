//! DICOM decoding of files written by dicom-rs: windowing, MONOCHROME1 inversion, bad files.

use std::path::Path;

use scanside_runtime::decode::{decode_bytes, decode_file, SourceInfo};

use crate::util::write_dicom;

#[test]
fn monochrome2_with_a_window_maps_the_window_to_zero_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.dcm");
    // center 1000, width 1001: ≤ 499.5 -> 0, > 1499.5 -> 1, linear between (PS3.3 C.11.2.1.2.1)
    write_dicom(
        &path,
        "MONOCHROME2",
        &[0, 500, 1000, 4095],
        2,
        2,
        Some((1000.0, 1001.0)),
    );
    let img = decode_file(&path).unwrap();
    assert_eq!((img.width, img.height, img.channels), (2, 2, 1));
    assert_eq!(img.pixels[0], 0.0);
    assert!((img.pixels[1] - 0.0005).abs() < 1e-6, "{:?}", img.pixels);
    assert!((img.pixels[2] - 0.5005).abs() < 1e-3, "{:?}", img.pixels);
    assert_eq!(img.pixels[3], 1.0);
    match img.source {
        SourceInfo::Dicom {
            modality,
            bits_stored,
            ref windowing,
            ..
        } => {
            assert_eq!(modality.as_deref(), Some("CR"));
            assert_eq!(bits_stored, 12);
            assert!(windowing.contains("center 1000"), "{windowing}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn monochrome1_is_inverted_and_unwindowed_images_are_min_max_scaled() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m1.dcm");
    write_dicom(&path, "MONOCHROME1", &[100, 200, 300, 500], 2, 2, None);
    let img = decode_file(&path).unwrap();
    assert_eq!(img.pixels, vec![1.0, 0.75, 0.5, 0.0]);
}

#[test]
fn a_truncated_dicom_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.dcm");
    write_dicom(&path, "MONOCHROME2", &[7; 64 * 64], 64, 64, None);
    let bytes = std::fs::read(&path).unwrap();
    let err = decode_bytes(Path::new("t.dcm"), &bytes[..bytes.len() - 2000])
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("t.dcm: cannot decode image"), "{err}");
}

#[test]
fn the_patient_id_is_read_from_the_header_without_decoding_pixels() {
    use scanside_runtime::decode::read_dicom_identity;
    use scanside_runtime::fixtures::{write_dicom, DicomFixture};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.dcm");
    write_dicom(
        &path,
        &DicomFixture {
            photometric: "MONOCHROME2",
            pixels: &[1, 2, 3, 4],
            rows: 2,
            cols: 2,
            window: None,
            patient_id: Some("PAT-0042"),
            sop_instance_uid: None,
            study_uid: None,
        },
    );
    assert_eq!(
        read_dicom_identity(&path).unwrap().patient_id.as_deref(),
        Some("PAT-0042")
    );
    let png = dir.path().join("x.png");
    std::fs::write(&png, b"\x89PNG\r\n\x1a\n").unwrap();
    let e = read_dicom_identity(&png).unwrap_err().to_string();
    assert!(e.contains("x.png") && e.contains("DICOM"), "{e}");
}

#[test]
fn a_huge_image_header_is_refused_before_any_pixel_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("huge.dcm");
    // A 30,000 x 30,000 header over 4 real pixels: refused by size, not by allocation.
    write_dicom(&path, "MONOCHROME2", &[1, 2, 3, 4], 30_000, 30_000, None);
    let err = decode_file(&path).unwrap_err().to_string();
    assert!(
        err.contains("huge.dcm") && err.contains("30000x30000") && err.contains("limit"),
        "{err}"
    );
}

#[test]
fn a_dicom_file_without_pixels_names_what_it_is() {
    use dicom_core::{DataElement, PrimitiveValue, VR};
    use dicom_dictionary_std::{tags, uids};
    use dicom_object::{FileMetaTableBuilder, InMemDicomObject};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sr.dcm");
    InMemDicomObject::from_element_iter([
        DataElement::new(
            tags::SOP_CLASS_UID,
            VR::UI,
            PrimitiveValue::from(uids::BASIC_TEXT_SR_STORAGE),
        ),
        DataElement::new(
            tags::SOP_INSTANCE_UID,
            VR::UI,
            PrimitiveValue::from("1.2.3"),
        ),
        DataElement::new(tags::MODALITY, VR::CS, PrimitiveValue::from("SR")),
    ])
    .with_meta(
        FileMetaTableBuilder::new()
            .transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN)
            .media_storage_sop_class_uid(uids::BASIC_TEXT_SR_STORAGE)
            .media_storage_sop_instance_uid("1.2.3"),
    )
    .unwrap()
    .write_to_file(&path)
    .unwrap();
    let err = decode_file(&path).unwrap_err().to_string();
    assert!(
        err.contains("sr.dcm") && err.contains("no pixel data") && err.contains("SR"),
        "{err}"
    );
}

#[test]
fn the_windowing_policy_decides_how_values_map_to_zero_one() {
    use scanside_runtime::decode::decode_bytes_with;
    use scanside_runtime::decode::DicomWindow;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.dcm");
    write_dicom(
        &path,
        "MONOCHROME2",
        &[0, 500, 1000, 4000],
        2,
        2,
        Some((1000.0, 1001.0)),
    );
    let bytes = std::fs::read(&path).unwrap();
    let file = decode_bytes_with(&path, &bytes, DicomWindow::File).unwrap();
    assert_eq!(file.pixels[3], 1.0, "the file's window clips 4000");
    let min_max = decode_bytes_with(&path, &bytes, DicomWindow::MinMax).unwrap();
    assert_eq!(min_max.pixels, vec![0.0, 0.125, 0.25, 1.0]);
    let fixed = DicomWindow::Fixed {
        center: 2000.5,
        width: 4000.0,
    };
    let lung = decode_bytes_with(&path, &bytes, fixed).unwrap();
    // lower = 2000.5 - 0.5 - 1999.5 = 1: 0 -> 0; upper = 3999: 4000 -> 1; 1000 ≈ 0.25.
    assert_eq!((lung.pixels[0], lung.pixels[3]), (0.0, 1.0));
    assert!((lung.pixels[2] - 0.25).abs() < 1e-3, "{:?}", lung.pixels);
    match lung.source {
        SourceInfo::Dicom { windowing, .. } => assert!(windowing.contains("2000.5"), "{windowing}"),
        other => panic!("{other:?}"),
    }
}

/// Writes a 2×2 MONOCHROME2 fixture, then adds `extra` elements to it.
fn dicom_with(
    path: &Path,
    pixels: &[u16],
    window: Option<(f64, f64)>,
    extra: Vec<dicom_core::DataElement<dicom_object::InMemDicomObject>>,
) {
    write_dicom(path, "MONOCHROME2", pixels, 2, 2, window);
    let mut obj = dicom_object::open_file(path).unwrap();
    for element in extra {
        obj.put(element);
    }
    obj.write_to_file(path).unwrap();
}

fn windowing_of(img: &scanside_runtime::decode::DecodedImage) -> String {
    match &img.source {
        SourceInfo::Dicom { windowing, .. } => windowing.clone(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_voi_lut_sequence_is_preferred_to_the_window_under_the_file_policy() {
    use dicom_core::{DataElement, PrimitiveValue, VR};
    use dicom_dictionary_std::tags;
    use dicom_object::InMemDicomObject;
    use scanside_runtime::decode::decode_bytes_with;
    use scanside_runtime::decode::DicomWindow;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("voi.dcm");
    // 4 entries from stored value 100, 8 bits: 100 → 0, 101 → 51, 102 → 204, 103 → 255;
    // below the first value the first entry, above the last the last (PS3.3 C.11.2.1.1).
    let item = InMemDicomObject::from_element_iter([
        DataElement::new(
            tags::LUT_DESCRIPTOR,
            VR::US,
            PrimitiveValue::U16([4, 100, 8].into_iter().collect()),
        ),
        DataElement::new(
            tags::LUT_DATA,
            VR::US,
            PrimitiveValue::U16([0, 51, 204, 255].into_iter().collect()),
        ),
    ]);
    dicom_with(
        &path,
        &[50, 101, 102, 900],
        Some((1000.0, 1001.0)),
        vec![DataElement::new(
            tags::VOILUT_SEQUENCE,
            VR::SQ,
            dicom_core::value::DataSetSequence::from(vec![item]),
        )],
    );
    let bytes = std::fs::read(&path).unwrap();
    let img = decode_bytes_with(&path, &bytes, DicomWindow::File).unwrap();
    assert_eq!(img.pixels, vec![0.0, 0.2, 0.8, 1.0]);
    assert!(
        windowing_of(&img).starts_with("VOI LUT (4 entries"),
        "{}",
        windowing_of(&img)
    );
    // The bundle's other policies leave the file's LUT aside.
    let img = decode_bytes_with(&path, &bytes, DicomWindow::MinMax).unwrap();
    assert_eq!(img.pixels[0], 0.0);
    assert_eq!(img.pixels[3], 1.0);
    assert!(
        (img.pixels[1] - 51.0 / 850.0).abs() < 1e-6,
        "{:?}",
        img.pixels
    );
}

#[test]
fn sigmoid_and_linear_exact_voi_functions_follow_the_standard() {
    use dicom_core::{DataElement, PrimitiveValue, VR};
    use dicom_dictionary_std::tags;
    let dir = tempfile::tempdir().unwrap();
    let function = |name: &str| {
        vec![DataElement::new(
            tags::VOILUT_FUNCTION,
            VR::CS,
            PrimitiveValue::from(name),
        )]
    };
    // centre 1000, width 400
    let pixels = [800, 900, 1000, 1300];
    let path = dir.path().join("sigmoid.dcm");
    dicom_with(&path, &pixels, Some((1000.0, 400.0)), function("SIGMOID"));
    let img = decode_file(&path).unwrap();
    for (got, x) in img.pixels.iter().zip(pixels) {
        let want = 1.0 / (1.0 + (-4.0 * (f64::from(x) - 1000.0) / 400.0).exp());
        assert!((f64::from(*got) - want).abs() < 1e-6, "{got} vs {want}");
    }
    assert!(windowing_of(&img).contains("SIGMOID"));
    let path = dir.path().join("exact.dcm");
    dicom_with(
        &path,
        &pixels,
        Some((1000.0, 400.0)),
        function("LINEAR_EXACT"),
    );
    let img = decode_file(&path).unwrap();
    assert_eq!(img.pixels, vec![0.0, 0.25, 0.5, 1.0]);
    let path = dir.path().join("odd.dcm");
    dicom_with(&path, &pixels, Some((1000.0, 400.0)), function("LOG"));
    let err = decode_file(&path).unwrap_err().to_string();
    assert!(err.contains("odd.dcm") && err.contains("\"LOG\""), "{err}");
}

#[test]
fn a_bundle_with_the_every_frame_policy_screens_each_frame_and_keeps_the_maximum() {
    use dicom_core::{DataElement, PrimitiveValue, VR};
    use dicom_dictionary_std::tags;
    use scanside_runtime::bundle::{write_bundle, Bundle, ModelFile, Trust};
    use scanside_runtime::decode::DicomFrames;
    use scanside_runtime::pipeline::Screener;
    let dir = tempfile::tempdir().unwrap();
    let bundle_dir = dir.path().join("bundle");
    crate::util::write_linear_bundle(&bundle_dir);
    let three_frames = dir.path().join("cine.dcm");
    // Window 1000/1001 maps 0 → 0 (dark), 1200 → 0.7005, 1000 → 0.5005, on 4×4 frames that
    // match the fixture model's input.
    let pixels: Vec<u16> = [0_u16, 1200, 1000].iter().flat_map(|&v| [v; 16]).collect();
    write_dicom(
        &three_frames,
        "MONOCHROME2",
        &pixels,
        4,
        4,
        Some((1000.0, 1001.0)),
    );
    let mut obj = dicom_object::open_file(&three_frames).unwrap();
    obj.put(DataElement::new(
        tags::NUMBER_OF_FRAMES,
        VR::IS,
        PrimitiveValue::from("3"),
    ));
    obj.write_to_file(&three_frames).unwrap();

    let screen = |policy: DicomFrames| {
        let bundle = Bundle::load(&bundle_dir, &Trust::AllowUnsigned).unwrap();
        let mut manifest = bundle.manifest.clone();
        manifest.preprocess.dicom_frames = policy;
        write_bundle(
            &bundle_dir,
            manifest,
            &bundle.read_model(ModelFile::Fp32).unwrap(),
            Some(&crate::util::test_key()),
        )
        .unwrap();
        let bundle = Bundle::load(&bundle_dir, &Trust::AllowUnsigned).unwrap();
        Screener::new(&bundle).unwrap().screen_file(&three_frames)
    };
    let first = screen(DicomFrames::First).unwrap();
    assert!(first.frames.is_empty());
    assert_eq!(first.top_class.as_deref(), Some("dark"));
    let every = screen(DicomFrames::Every).unwrap();
    let tops: Vec<(u32, &str)> = every
        .frames
        .iter()
        .map(|f| (f.frame, f.top_class.as_str()))
        .collect();
    assert_eq!(tops[..2], [(1, "dark"), (2, "bright")], "{tops:?}");
    assert_eq!(every.frames.len(), 3);
    // The file's probabilities are the per-class maxima over frames.
    for (class, p) in &every.probabilities {
        let max = every
            .frames
            .iter()
            .map(|f| f.probabilities.iter().find(|(c, _)| c == class).unwrap().1)
            .fold(f32::MIN, f32::max);
        assert_eq!(*p, max, "{class}");
    }
    assert_eq!(every.top_class.as_deref(), Some("dark"));
    assert!(
        (every.top_probability.unwrap() - 0.731).abs() < 1e-3,
        "{every:?}"
    );
    assert_eq!(every.frames[0].logits, first.logits);
    let json = serde_json::to_value(&every).unwrap();
    assert_eq!(json["frames"][1]["frame"], 2, "{json}");
    assert!(serde_json::to_value(&first)
        .unwrap()
        .get("frames")
        .is_none());

    // A header claiming more frames than the policy's limit is refused by name.
    let mut obj = dicom_object::open_file(&three_frames).unwrap();
    obj.put(DataElement::new(
        tags::NUMBER_OF_FRAMES,
        VR::IS,
        PrimitiveValue::from("100000"),
    ));
    obj.write_to_file(&three_frames).unwrap();
    let err = screen(DicomFrames::Every).unwrap_err().to_string();
    assert!(
        err.contains("cine.dcm") && err.contains("frame limit"),
        "{err}"
    );
}

/// A native DICOM file: `frames` frames of `rows × cols` pixels with `samples` samples each
/// (RGB when 3), `bits_stored` of `bits_allocated` bits, unsigned.
fn write_native(
    path: &Path,
    (rows, cols, samples, frames): (u16, u16, u16, u32),
    (bits_allocated, bits_stored): (u16, u16),
    values: &[u16],
) {
    scanside_runtime::fixtures::write_pixels(
        path,
        &scanside_runtime::fixtures::PixelFixture {
            photometric: if samples == 3 { "RGB" } else { "MONOCHROME2" },
            samples,
            rows,
            cols,
            frames,
            bits_allocated,
            bits_stored,
            signed: false,
            values,
        },
    );
}

/// Image-like test content: smooth ramps, flat patches (run mode, with runs that end mid-line
/// and at the line end), edges and noise, over the full `0..2^bits` range.
fn image_like(rows: usize, cols: usize, samples: usize, frames: usize, bits: u32) -> Vec<u16> {
    let max = (1_u32 << bits) - 1;
    let mut state = 0x2545_F491_u32;
    let mut values = Vec::with_capacity(rows * cols * samples * frames);
    for f in 0..frames {
        for y in 0..rows {
            for x in 0..cols {
                for s in 0..samples {
                    state ^= state << 13;
                    state ^= state >> 17;
                    state ^= state << 5;
                    let v = if (x / 9 + y / 7 + f) % 4 == 0 {
                        max / 3 + s as u32 // flat patch
                    } else if x > cols * 3 / 4 {
                        if (x + y) % 2 == 0 {
                            max
                        } else {
                            0
                        } // extremes, wrap-around residuals
                    } else {
                        let ramp = (x * 37 + y * 11 + s * 50 + f * 13) as u32 * (max / 255).max(1);
                        (ramp % (max + 1)).saturating_add(state % 5).min(max)
                    };
                    values.push(v as u16);
                }
            }
        }
    }
    values
}

/// Whether dcmtk's JPEG-LS encoder is absent (the test then says so and skips).
fn dcmcjpls_missing() -> bool {
    let missing = std::process::Command::new("dcmcjpls")
        .arg("--version")
        .output()
        .map_or(true, |o| !o.status.success());
    if missing {
        eprintln!("SKIP: dcmtk's dcmcjpls is not installed (tools/setup.sh installs dcmtk)");
    }
    missing
}

#[test]
fn jpeg_ls_files_from_dcmtk_decode_to_their_source_pixels() {
    use scanside_runtime::decode::read_dicom_frames;
    use scanside_runtime::decode::DicomFrames;
    if dcmcjpls_missing() {
        return;
    }
    struct Case {
        name: &'static str,
        /// Rows, columns, samples per pixel, frames.
        shape: (u16, u16, u16, u32),
        /// Bits allocated, bits stored.
        bits: (u16, u16),
        options: &'static [&'static str],
        near: u16,
    }
    let case = |name, shape, bits, options, near| Case {
        name,
        shape,
        bits,
        options,
        near,
    };
    let cases = [
        case("grey8", (37, 53, 1, 1), (8, 8), &["+el"][..], 0),
        case("grey12", (41, 29, 1, 1), (16, 12), &["+el"], 0),
        case("grey16", (33, 47, 1, 1), (16, 16), &["+el"], 0),
        case(
            "grey8-near3",
            (37, 53, 1, 1),
            (8, 8),
            &["+en", "+md", "3"],
            3,
        ),
        case(
            "grey12-near2",
            (41, 29, 1, 1),
            (16, 12),
            &["+en", "+md", "2"],
            2,
        ),
        case("rgb-none", (23, 31, 3, 1), (8, 8), &["+el", "+in"], 0),
        case("rgb-line", (23, 31, 3, 1), (8, 8), &["+el", "+il"], 0),
        case("rgb-sample", (23, 31, 3, 1), (8, 8), &["+el", "+is"], 0),
        case(
            "rgb-sample-near2",
            (23, 31, 3, 1),
            (8, 8),
            &["+en", "+md", "2", "+is"],
            2,
        ),
        case("grey8-frames", (19, 21, 1, 3), (8, 8), &["+el"], 0),
    ];
    let dir = tempfile::tempdir().unwrap();
    for Case {
        name,
        shape: (rows, cols, samples, frames),
        bits: (allocated, stored),
        options,
        near,
    } in cases
    {
        let native = dir.path().join(format!("{name}.dcm"));
        let encoded = dir.path().join(format!("{name}.jls.dcm"));
        let source = image_like(
            usize::from(rows),
            usize::from(cols),
            usize::from(samples),
            frames as usize,
            u32::from(stored),
        );
        write_native(
            &native,
            (rows, cols, samples, frames),
            (allocated, stored),
            &source,
        );
        let status = std::process::Command::new("dcmcjpls")
            .args(options)
            .arg(&native)
            .arg(&encoded)
            .status()
            .unwrap();
        assert!(status.success(), "{name}: dcmcjpls failed");
        let bytes = std::fs::read(&encoded).unwrap();
        let mut decoded = Vec::new();
        read_dicom_frames(&encoded, &bytes, DicomFrames::Every, |values| {
            assert!(
                values.transfer_syntax.starts_with("1.2.840.10008.1.2.4.8"),
                "{name}: {}",
                values.transfer_syntax
            );
            decoded.extend(values.values);
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(decoded.len(), source.len(), "{name}");
        let worst = source
            .iter()
            .zip(&decoded)
            .map(|(&s, &d)| (f32::from(s) - d).abs())
            .fold(0.0_f32, f32::max);
        assert!(
            worst <= f32::from(near),
            "{name}: largest difference {worst}, NEAR {near}"
        );
        if near > 0 {
            // Near-lossless really was lossy somewhere (else the NEAR path went untested).
            assert!(
                source
                    .iter()
                    .zip(&decoded)
                    .any(|(&s, &d)| f32::from(s) != d),
                "{name}"
            );
        }
    }
}

#[test]
fn a_corrupt_jpeg_ls_stream_is_a_clear_error() {
    use scanside_runtime::decode::read_dicom_values;
    if dcmcjpls_missing() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (native, encoded) = (dir.path().join("n.dcm"), dir.path().join("e.dcm"));
    write_native(
        &native,
        (32, 32, 1, 1),
        (8, 8),
        &image_like(32, 32, 1, 1, 8),
    );
    assert!(std::process::Command::new("dcmcjpls")
        .arg(&native)
        .arg(&encoded)
        .status()
        .unwrap()
        .success());
    let bytes = std::fs::read(&encoded).unwrap();
    // The codestream starts at the first SOI after the header; zeroed from a few bytes into
    // the scan data, or just before its end-of-image marker, it is truncated: refused (an error
    // naming the file), never decoded from the zeros. Bit flips inside it: an error or some
    // image, never a panic.
    let soi = bytes.windows(2).rposition(|w| w == [0xFF, 0xD8]).unwrap();
    let eoi = bytes.windows(2).rposition(|w| w == [0xFF, 0xD9]).unwrap();
    for cut in [soi + 4, soi + 40, eoi] {
        let mut damaged = bytes.clone();
        damaged[cut..].iter_mut().for_each(|b| *b = 0);
        let e = read_dicom_values(&encoded, &damaged)
            .unwrap_err()
            .to_string();
        assert!(e.contains("e.dcm"), "{e}");
    }
    let mut state = 7_u32;
    for _ in 0..200 {
        let mut damaged = bytes.clone();
        state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        let at = soi + 2 + (state as usize >> 8) % (bytes.len() - soi - 2);
        damaged[at] ^= 1 << (state % 8);
        if let Err(e) = read_dicom_values(&encoded, &damaged) {
            assert!(e.to_string().contains("e.dcm"), "{e}");
        }
    }
}

#[test]
fn signed_jpeg_ls_samples_keep_their_sign() {
    use scanside_runtime::decode::read_dicom_values;
    if dcmcjpls_missing() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (native, encoded) = (dir.path().join("s.dcm"), dir.path().join("s.jls.dcm"));
    // 12-bit signed values (−2048..=2047, CT-like: air, water, bone), stored sign-extended.
    let values: Vec<i16> = (0..40 * 30)
        .map(|i| match i % 7 {
            0 => -2048,
            1 => -1000,
            2 => -1,
            3 => 0,
            4 => 40 + (i % 50) as i16,
            5 => 1200,
            _ => 2047,
        })
        .collect();
    let stored: Vec<u16> = values.iter().map(|&v| v as u16).collect();
    scanside_runtime::fixtures::write_pixels(
        &native,
        &scanside_runtime::fixtures::PixelFixture {
            photometric: "MONOCHROME2",
            samples: 1,
            rows: 40,
            cols: 30,
            frames: 1,
            bits_allocated: 16,
            bits_stored: 12,
            signed: true,
            values: &stored,
        },
    );
    assert!(std::process::Command::new("dcmcjpls")
        .arg(&native)
        .arg(&encoded)
        .status()
        .unwrap()
        .success());
    let bytes = std::fs::read(&encoded).unwrap();
    let decoded = read_dicom_values(&encoded, &bytes).unwrap();
    assert!(decoded.transfer_syntax.starts_with("1.2.840.10008.1.2.4.8"));
    let want: Vec<f32> = values.iter().map(|&v| f32::from(v)).collect();
    assert_eq!(decoded.values, want);
}
