//! Test fixtures shared by this crate's tests and the trainer's: small DICOM files written with
//! dicom-rs. Compiled only with the `fixtures` feature (never into the edge binary).

use std::path::Path;

use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};

/// What to put in a generated 16-bit MONOCHROME DICOM file (explicit VR little endian).
#[derive(Debug, Clone)]
pub struct DicomFixture<'a> {
    /// `MONOCHROME1` or `MONOCHROME2`.
    pub photometric: &'a str,
    /// Stored values, row-major.
    pub pixels: &'a [u16],
    /// Rows.
    pub rows: u16,
    /// Columns.
    pub cols: u16,
    /// Window centre and width.
    pub window: Option<(f64, f64)>,
    /// (0010,0020) Patient ID.
    pub patient_id: Option<&'a str>,
    /// (0008,0018) SOP Instance UID (default: one fixed UID).
    pub sop_instance_uid: Option<&'a str>,
    /// (0020,000D) Study Instance UID.
    pub study_uid: Option<&'a str>,
}

/// The pixel module of a generated native (explicit VR little endian) image: grey or RGB
/// (interleaved), one or more frames, 8- or 16-bit allocated, unsigned or signed.
#[derive(Debug, Clone)]
pub struct PixelFixture<'a> {
    /// `MONOCHROME1`, `MONOCHROME2` or `RGB`.
    pub photometric: &'a str,
    /// Samples per pixel (1 or 3).
    pub samples: u16,
    /// Rows.
    pub rows: u16,
    /// Columns.
    pub cols: u16,
    /// Frames (Number of Frames is written when more than one).
    pub frames: u32,
    /// Bits allocated (8 or 16).
    pub bits_allocated: u16,
    /// Bits stored.
    pub bits_stored: u16,
    /// Pixel Representation 1 (two's complement) instead of 0.
    pub signed: bool,
    /// Stored values (bit patterns), frame by frame, row-major, samples interleaved.
    pub values: &'a [u16],
}

/// The data set of an image with `pixels` (Modality CR, Secondary Capture).
fn image_object(pixels: &PixelFixture<'_>, sop_instance_uid: &str) -> InMemDicomObject {
    let us = |tag, value: u16| DataElement::new(tag, VR::US, PrimitiveValue::from(value));
    let pixel_data = if pixels.bits_allocated == 8 {
        let bytes: Vec<u8> = pixels.values.iter().map(|&v| v as u8).collect();
        DataElement::new(tags::PIXEL_DATA, VR::OB, PrimitiveValue::from(bytes))
    } else {
        let words = PrimitiveValue::U16(pixels.values.iter().copied().collect());
        DataElement::new(tags::PIXEL_DATA, VR::OW, words)
    };
    let mut obj = InMemDicomObject::from_element_iter([
        DataElement::new(
            tags::SOP_CLASS_UID,
            VR::UI,
            PrimitiveValue::from(uids::SECONDARY_CAPTURE_IMAGE_STORAGE),
        ),
        DataElement::new(
            tags::SOP_INSTANCE_UID,
            VR::UI,
            PrimitiveValue::from(sop_instance_uid),
        ),
        DataElement::new(tags::MODALITY, VR::CS, PrimitiveValue::from("CR")),
        us(tags::SAMPLES_PER_PIXEL, pixels.samples),
        DataElement::new(
            tags::PHOTOMETRIC_INTERPRETATION,
            VR::CS,
            PrimitiveValue::from(pixels.photometric),
        ),
        us(tags::ROWS, pixels.rows),
        us(tags::COLUMNS, pixels.cols),
        us(tags::BITS_ALLOCATED, pixels.bits_allocated),
        us(tags::BITS_STORED, pixels.bits_stored),
        us(tags::HIGH_BIT, pixels.bits_stored - 1),
        us(tags::PIXEL_REPRESENTATION, u16::from(pixels.signed)),
        pixel_data,
    ]);
    if pixels.samples > 1 {
        obj.put(us(tags::PLANAR_CONFIGURATION, 0));
    }
    if pixels.frames > 1 {
        obj.put(DataElement::new(
            tags::NUMBER_OF_FRAMES,
            VR::IS,
            PrimitiveValue::from(pixels.frames.to_string()),
        ));
    }
    obj
}

/// Writes `obj` as an explicit VR little endian Part 10 file; panics on failure (tests only).
fn save(obj: InMemDicomObject, path: &Path, sop_instance_uid: &str) {
    let file = obj
        .with_meta(
            FileMetaTableBuilder::new()
                .transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN)
                .media_storage_sop_class_uid(uids::SECONDARY_CAPTURE_IMAGE_STORAGE)
                .media_storage_sop_instance_uid(sop_instance_uid),
        )
        .expect("file meta table");
    file.write_to_file(path).expect("write DICOM fixture");
}

/// Writes an image with `pixels` to `path`; panics on failure (tests only).
pub fn write_pixels(path: &Path, pixels: &PixelFixture<'_>) {
    let uid = "1.2.826.0.1.3680043.2.1125.9.1";
    save(image_object(pixels, uid), path, uid);
}

/// Writes the fixture (16-bit MONOCHROME, 12 bits stored) to `path`; panics on failure (tests
/// only).
pub fn write_dicom(path: &Path, fixture: &DicomFixture<'_>) {
    let sop_instance_uid = fixture
        .sop_instance_uid
        .unwrap_or("1.2.826.0.1.3680043.2.1125.1.1");
    let pixels = PixelFixture {
        photometric: fixture.photometric,
        samples: 1,
        rows: fixture.rows,
        cols: fixture.cols,
        frames: 1,
        bits_allocated: 16,
        bits_stored: 12,
        signed: false,
        values: fixture.pixels,
    };
    let mut obj = image_object(&pixels, sop_instance_uid);
    if let Some((center, width)) = fixture.window {
        obj.put(DataElement::new(
            tags::WINDOW_CENTER,
            VR::DS,
            PrimitiveValue::from(center.to_string()),
        ));
        obj.put(DataElement::new(
            tags::WINDOW_WIDTH,
            VR::DS,
            PrimitiveValue::from(width.to_string()),
        ));
    }
    if let Some(uid) = fixture.study_uid {
        obj.put(DataElement::new(
            tags::STUDY_INSTANCE_UID,
            VR::UI,
            PrimitiveValue::from(uid),
        ));
    }
    if let Some(id) = fixture.patient_id {
        obj.put(DataElement::new(
            tags::PATIENT_ID,
            VR::LO,
            PrimitiveValue::from(id),
        ));
    }
    save(obj, path, sop_instance_uid);
}

/// `n` deterministic pseudo-random values in [-1, 1) (xorshift32 from `seed`): kernel tests'
/// inputs and weights, the same on every machine.
pub fn pseudo_random_values(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s >> 8) as f32 / (1 << 23) as f32 - 1.0
        })
        .collect()
}

/// Writes a DICOMDIR whose IMAGE records reference `files` (each a list of File ID components
/// relative to the DICOMDIR's folder); panics on failure (tests only).
pub fn write_dicomdir(path: &Path, files: &[&[&str]]) {
    use dicom_core::value::DataSetSequence;
    let records: Vec<InMemDicomObject> = files
        .iter()
        .map(|components| {
            InMemDicomObject::from_element_iter([
                DataElement::new(
                    tags::DIRECTORY_RECORD_TYPE,
                    VR::CS,
                    PrimitiveValue::from("IMAGE"),
                ),
                DataElement::new(
                    tags::REFERENCED_FILE_ID,
                    VR::CS,
                    PrimitiveValue::Strs(components.iter().map(|c| c.to_string()).collect()),
                ),
            ])
        })
        .collect();
    let obj = InMemDicomObject::from_element_iter([
        DataElement::new(tags::FILE_SET_ID, VR::CS, PrimitiveValue::from("SCANSIDE")),
        DataElement::new(
            tags::DIRECTORY_RECORD_SEQUENCE,
            VR::SQ,
            DataSetSequence::from(records),
        ),
    ]);
    let file = obj
        .with_meta(
            FileMetaTableBuilder::new()
                .transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN)
                .media_storage_sop_class_uid(uids::MEDIA_STORAGE_DIRECTORY_STORAGE)
                .media_storage_sop_instance_uid("1.2.826.0.1.3680043.2.1125.9.99"),
        )
        .expect("file meta table");
    file.write_to_file(path).expect("write DICOMDIR fixture");
}
