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

/// Writes the fixture to `path`; panics on failure (tests only).
pub fn write_dicom(path: &Path, fixture: &DicomFixture<'_>) {
    let sop_instance_uid = fixture
        .sop_instance_uid
        .unwrap_or("1.2.826.0.1.3680043.2.1125.1.1");
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
        DataElement::new(tags::SAMPLES_PER_PIXEL, VR::US, PrimitiveValue::from(1_u16)),
        DataElement::new(
            tags::PHOTOMETRIC_INTERPRETATION,
            VR::CS,
            PrimitiveValue::from(fixture.photometric),
        ),
        DataElement::new(tags::ROWS, VR::US, PrimitiveValue::from(fixture.rows)),
        DataElement::new(tags::COLUMNS, VR::US, PrimitiveValue::from(fixture.cols)),
        DataElement::new(tags::BITS_ALLOCATED, VR::US, PrimitiveValue::from(16_u16)),
        DataElement::new(tags::BITS_STORED, VR::US, PrimitiveValue::from(12_u16)),
        DataElement::new(tags::HIGH_BIT, VR::US, PrimitiveValue::from(11_u16)),
        DataElement::new(
            tags::PIXEL_REPRESENTATION,
            VR::US,
            PrimitiveValue::from(0_u16),
        ),
        DataElement::new(
            tags::PIXEL_DATA,
            VR::OW,
            PrimitiveValue::U16(fixture.pixels.iter().copied().collect()),
        ),
    ]);
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
